"""What a web process does when it starts and stops (the ASGI lifespan protocol): while it runs, it
drains the metering outbox into the usage ledger and keeps its bulk holds (billing.holds) renewed,
giving back what idle ones hold; on shutdown it waits for requests' pending bookkeeping, gives
back what its holds do not need, then drains once more (what the database cannot take then stays
spooled for the next process to drain)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from billing import outbox
from billing import services as billing
from billing.holds import holds
from serving.gateway import metering
from tenancy.detached import run_detached

log = logging.getLogger("maas.lifespan")
HOLDS_EVERY_SECONDS = 1.0


async def keep_holds() -> None:
    while True:
        await asyncio.sleep(HOLDS_EVERY_SECONDS)
        try:
            await run_detached(holds.maintain)
        except Exception:
            log.exception("could not renew or give back bulk holds; retrying")


async def lifespan(receive, send) -> None:
    background: list[asyncio.Task] = []
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            loop = asyncio.get_running_loop()
            background = [
                loop.create_task(outbox.drain_forever(billing.ingest_usage)),
                loop.create_task(keep_holds()),
            ]
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await metering.drain()
            try:
                await run_detached(holds.maintain, everything=True)
            except Exception as error:
                log.error("bulk holds are left to the reaper: %s", error)
            try:
                await run_detached(outbox.drain, billing.ingest_usage)
            except Exception as error:
                log.error("usage records stay spooled for the next process: %s", error)
            await send({"type": "lifespan.shutdown.complete"})
            return
