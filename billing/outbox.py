"""The metering outbox: usage records are appended to a local spool file before a response ends,
and drained from there into the ledger. The ledger may be unreachable for as long as the disk
holds, and a process may die or restart, without losing a record.

Layout: METERING_SPOOL_DIR holds one `<host>.<pid>.<n>.jsonl` file per writing process at a
time, each line a usage record (billing.ledger). A writer holds an exclusive `flock` on its open
file, so a file nobody holds is complete: sealed by its writer's rotation, or left by a process
that died (the kernel released its lock). Draining claims such files one by one under the same
lock, writes their records in a transaction (idempotent on the request id), then deletes them.
Any process on the host may drain (web processes do it every METERING_DRAIN_SECONDS and when they
stop; `manage.py drain_usage` and the periodic task do it too); a file claimed twice is harmless.

Durability: a record is in the kernel's page cache when `append` returns, which survives the
process (SIGKILL included) but not a crash of the machine itself.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

log = logging.getLogger("billing.outbox")
GATHER_SECONDS = 0.01


class Spool:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = os.getpid()
        self._numbers = itertools.count()

    def _open(self) -> int:
        if self._pid != os.getpid():  # forked: the parent's file and lock are not ours
            self._fd, self._pid = None, os.getpid()
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{socket.gethostname()}.{self._pid}.{next(self._numbers)}.jsonl"
            path = self.directory / name
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd = fd
        return self._fd

    def append(self, record: dict) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = self._open()
            written = os.write(fd, line)
            while written < len(line):  # a regular file takes it all at once in practice
                written += os.write(fd, line[written:])

    def seal(self) -> None:
        """Close the current file (it becomes drainable); the next append starts another."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)  # releases the flock
            self._fd = None


def reject(record: dict, reason: str) -> None:
    """Set aside a record the ledger refused (kept for an operator under rejected/, never retried)."""
    directory = Path(settings.METERING_SPOOL_DIR) / "rejected"
    directory.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"record": record, "reason": reason}, separators=(",", ":")) + "\n"
    with open(directory / f"{socket.gethostname()}.jsonl", "a") as handle:
        handle.write(line)
    log.error("usage record %s refused by the ledger and set aside: %s", record.get("request_id"), reason)


def read_records(path: Path) -> list[dict]:
    records = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                records.append(json.loads(line))
            except ValueError:
                # Only a writer killed in the middle of a line leaves one; nothing was served for it
                # beyond what its earlier lines say.
                log.error("skipping an unreadable usage record, %s line %d", path.name, number)
    return records


def _age(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def drain_directory(directory: Path, ingest: Callable[[list[dict]], object]) -> int:
    """Claim every complete spool file in the directory, oldest first, and ingest its records.
    Returns the number of records handed to `ingest`; stops at the first failure (the file stays)."""
    total = 0
    if not directory.exists():
        return 0
    for path in sorted(directory.glob("*.jsonl"), key=_age):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # another drainer finished it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive and still appending, or another drainer has it
            if not os.path.exists(path):
                continue  # drained and deleted while we waited to open it
            records = read_records(path)
            ingest(records)
            total += len(records)
            path.unlink()
        finally:
            os.close(fd)
    return total


_spool: Spool | None = None
_spool_guard = threading.Lock()


def spool() -> Spool:
    global _spool
    with _spool_guard:
        if _spool is None or _spool.directory != Path(settings.METERING_SPOOL_DIR):
            _spool = Spool(settings.METERING_SPOOL_DIR)
        return _spool


# Records the spool could not take (a full or failing disk), kept in memory for the drainer, which
# writes them into the ledger directly; and until when new requests are refused (healthy()).
_unspooled: list[dict] = []
_unspooled_guard = threading.Lock()
_broken_until = 0.0
REFUSE_AFTER_FAILURE_SECONDS = 5.0


def append(record: dict) -> None:
    """Durable once this returns: on the spool's disk, or — when the disk refuses it — in this
    process's memory until the drainer writes it into the ledger, while healthy() says the gateway
    must admit no new requests for a while."""
    global _broken_until
    try:
        spool().append(record)
    except OSError as error:
        with _unspooled_guard:
            _unspooled.append(record)
            _broken_until = time.monotonic() + REFUSE_AFTER_FAILURE_SECONDS
        log.error("the metering spool refused usage record %s (%s); kept in memory", record.get("request_id"), error)
        spool().seal()  # the next append opens a new file (the error may belong to this one)


def healthy() -> bool:
    """Whether usage can be recorded now: not if the spool refused a record in the last few seconds."""
    return time.monotonic() >= _broken_until


def _drain_memory(ingest: Callable[[list[dict]], object]) -> int:
    with _unspooled_guard:
        records = list(_unspooled)
    if not records:
        return 0
    ingest(records)
    with _unspooled_guard:
        del _unspooled[: len(records)]
    return len(records)


def drain(ingest: Callable[[list[dict]], object]) -> int:
    """Seal this process's file and drain every complete file of the host, and the records kept in
    memory."""
    current = spool()
    current.seal()
    return _drain_memory(ingest) + drain_directory(current.directory, ingest)


_wake: tuple | None = None  # (loop, asyncio.Event) of this process's running drainer


def nudge() -> None:
    """A record was appended: let the drainer run now rather than at its next tick, so that a
    request's reservation is settled within milliseconds (records finishing together still share
    one transaction)."""
    if _wake is not None:
        loop, event = _wake
        loop.call_soon_threadsafe(event.set)


async def drain_forever(ingest: Callable[[list[dict]], object]) -> None:
    """A web process's drainer: when nudged (after a short gathering pause) and at least every
    METERING_DRAIN_SECONDS; while the database is unreachable, retries back off to 10 s, and the
    records wait on disk."""
    import asyncio

    from tenancy.detached import run_detached

    global _wake
    event = asyncio.Event()
    _wake = (asyncio.get_running_loop(), event)
    failures = 0
    try:
        while True:
            if failures:
                await asyncio.sleep(min(10.0, settings.METERING_DRAIN_SECONDS * 2 ** min(failures, 5)))
            else:
                try:
                    await asyncio.wait_for(event.wait(), timeout=settings.METERING_DRAIN_SECONDS)
                    await asyncio.sleep(GATHER_SECONDS)
                except TimeoutError:
                    pass
            event.clear()
            try:
                await run_detached(drain, ingest)
                if failures:
                    log.warning("the usage ledger is reachable again after %d failed drains", failures)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    log.error("cannot drain usage records into the ledger (%s); they stay spooled", error)
    finally:
        _wake = None
