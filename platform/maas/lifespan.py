"""What a web process does when it starts and stops (the ASGI lifespan protocol): it drains the
metering outbox into the usage ledger while it runs, and on shutdown waits for requests' pending
bookkeeping, then drains once more (what the database cannot take then stays spooled for the next
process to drain)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from billing import outbox, reserving
from billing import services as billing
from serving.gateway import metering
from tenancy.detached import run_detached

log = logging.getLogger("maas.lifespan")


async def lifespan(receive, send) -> None:
    drainer: asyncio.Task | None = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            drainer = asyncio.get_running_loop().create_task(outbox.drain_forever(billing.ingest_usage))
            reserving.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if drainer is not None:
                drainer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drainer
            await metering.drain()
            await reserving.close()
            try:
                await run_detached(outbox.drain, billing.ingest_usage)
            except Exception as error:
                log.error("usage records stay spooled for the next process: %s", error)
            await send({"type": "lifespan.shutdown.complete"})
            return
