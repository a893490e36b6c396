"""A web process's bulk holds: money reserved in the database in bulk (billing.budgets.top_up),
from which the process admits requests in memory, so that admitting a request costs no database
round trip while still never spending money that is not held.

One hold per organization (and per key, for a key with a spend limit) per process. Admitting a
request draws its worst-case cost from the hold; when the request ends, what it did not use is
given back in memory, and its cost stays drawn: its ledger row will charge that much of the hold
(billing.budgets.settle). A draw that does not fit tops the hold up first, by at least the
shortfall: so a request is refused only when the budgets cannot cover it on top of everything
already held, the same rule as reserving each request alone.

While the process lives, `maintain` (the web process's lifespan runs it every second) renews its
holds' expiry and gives back the unused part of a hold not drawn from for BILLING_HOLD_IDLE_SECONDS
(closing it when no request drawn from it is still running). A
process that dies stops renewing: the reaper gives back what its holds still held, once
BILLING_RESERVATION_TTL_SECONDS have passed. A hold is only drawn from while its last renewal is
recent (half the TTL): a process that stalled or lost its hold starts a new one.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from django.conf import settings

from billing import budgets

log = logging.getLogger("billing.holds")
# A top-up asks for this many worst cases of the request that needed it...
FILL_REQUESTS = 64
# ...but takes at most this fraction of what the budgets have left beyond the request's own need.
SHARE = 4


@dataclass
class Hold:
    organization_id: int
    api_key_id: str | None  # set for a key with a spend limit: the key's limit is held too
    id: str = field(default_factory=lambda: f"bulk:{uuid.uuid4().hex}")
    amount: int = 0  # what the database holds for it (before any settle)
    drawn: int = 0  # worst cases of requests in flight, plus costs of requests that ended
    in_flight: int = 0
    used_at: float = field(default_factory=time.monotonic)
    renewed_at: float = field(default_factory=time.monotonic)
    top_up_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def free(self) -> int:
        return self.amount - self.drawn


class Holds:
    def __init__(self):
        self._lock = threading.Lock()
        self._open: dict[tuple[int, str | None], Hold] = {}
        self._by_id: dict[str, Hold] = {}
        self._closing: list[Hold] = []  # closed to draws; their unused part is given back by maintain()

    def _fresh(self, hold: Hold, now: float) -> bool:
        return now - hold.renewed_at < settings.BILLING_RESERVATION_TTL_SECONDS / 2

    def try_draw(self, organization_id: int, key: str | None, amount: int) -> str | None:
        """Draw `amount` from the open hold, in memory; None if there is none or it lacks room."""
        now = time.monotonic()
        with self._lock:
            hold = self._open.get((organization_id, key))
            if hold is None or hold.free < amount or not self._fresh(hold, now):
                return None
            hold.drawn += amount
            hold.in_flight += 1
            hold.used_at = now
            return hold.id

    def draw(self, organization_id: int, key: str | None, amount: int) -> str:
        """Draw `amount`, topping the hold up in the database if it lacks room (call off the event
        loop). Raises budgets.InsufficientQuota when the budgets cannot cover it."""
        for _ in range(8):
            found = self.try_draw(organization_id, key, amount)
            if found is not None:
                return found
            hold = self._open_hold(organization_id, key)
            with hold.top_up_lock:  # one top-up at a time per hold; the others find its room
                found = self.try_draw(organization_id, key, amount)
                if found is not None:
                    return found
                with self._lock:
                    shortfall = max(0, amount - hold.free)
                try:
                    granted = budgets.top_up(
                        hold_id=hold.id,
                        organization_id=organization_id,
                        api_key_id=key,
                        key_limited=key is not None,
                        shortfall=shortfall,
                        desired=max(shortfall, amount * FILL_REQUESTS),
                        share=SHARE,
                        ttl_seconds=settings.BILLING_RESERVATION_TTL_SECONDS,
                    )
                except budgets.HoldLost:
                    self._retire(hold)
                    continue
                with self._lock:
                    hold.amount += granted
                    hold.renewed_at = time.monotonic()
                    if hold.free >= amount and self._open.get((organization_id, key)) is hold:
                        hold.drawn += amount
                        hold.in_flight += 1
                        hold.used_at = time.monotonic()
                        return hold.id
        raise budgets.InsufficientQuota(
            "organization_credit", "The request could not be admitted: the budget is in heavy use. Retry shortly."
        )

    def _open_hold(self, organization_id: int, key: str | None) -> Hold:
        now = time.monotonic()
        with self._lock:
            hold = self._open.get((organization_id, key))
            if hold is not None and not self._fresh(hold, now):
                self._close(hold)
                hold = None
            if hold is None:
                hold = Hold(organization_id, key)
                self._open[(organization_id, key)] = hold
                self._by_id[hold.id] = hold
            return hold

    def finish(self, hold_id: str, held: int, cost: int) -> None:
        """A request drawn from this hold ended costing `cost` of the `held` it drew: the rest is
        free again (its cost stays drawn until its ledger row charges the hold)."""
        with self._lock:
            hold = self._by_id.get(hold_id)
            if hold is None:
                return
            hold.drawn -= held - min(cost, held)
            hold.in_flight -= 1
            if hold.in_flight == 0 and self._open.get((hold.organization_id, hold.api_key_id)) is not hold:
                self._by_id.pop(hold.id, None)  # closed earlier; its release already ran

    def give_back(self, hold_id: str, held: int) -> None:
        """A request that used nothing (it never reached a model server)."""
        self.finish(hold_id, held, 0)

    def _close(self, hold: Hold) -> None:
        # Under self._lock: no more draws. Its unused part is given back by maintain().
        if self._open.get((hold.organization_id, hold.api_key_id)) is hold:
            del self._open[(hold.organization_id, hold.api_key_id)]
        self._closing.append(hold)

    def _retire(self, hold: Hold) -> None:
        with self._lock:
            if self._open.get((hold.organization_id, hold.api_key_id)) is hold:
                del self._open[(hold.organization_id, hold.api_key_id)]
            if hold.in_flight == 0:
                self._by_id.pop(hold.id, None)

    def maintain(self, *, everything: bool = False) -> None:
        """Renew the open holds' expiry when due, and give back the unused part of holds that are
        idle (or of all of them, `everything`, when the process stops). Call off the event loop."""
        now = time.monotonic()
        ttl = settings.BILLING_RESERVATION_TTL_SECONDS
        with self._lock:
            done = [(hold, True) for hold in self._closing]
            self._closing.clear()
            for hold in list(self._open.values()):
                if everything or now - hold.used_at >= settings.BILLING_HOLD_IDLE_SECONDS:
                    if everything or hold.in_flight == 0:
                        del self._open[(hold.organization_id, hold.api_key_id)]
                        done.append((hold, True))
                    elif hold.free > 0:
                        done.append((hold, False))  # not drawn from lately: its unused part only
            due = [h for h in self._open.values() if now - h.renewed_at >= ttl / 3]
        for hold, close in done:
            with self._lock:
                back = hold.free
                hold.amount -= back
                if close and hold.in_flight == 0:
                    self._by_id.pop(hold.id, None)
            try:
                budgets.shrink(hold.id, back, ttl_seconds=ttl, close=close)
            except Exception:
                # The reaper gives it back once its expiry passes.
                log.exception("could not give back the unused part of %s", hold.id)
        if due:
            found = budgets.renew([h.id for h in due], ttl_seconds=ttl)
            with self._lock:
                for hold in due:
                    if hold.id in found:
                        hold.renewed_at = now
                    elif self._open.get((hold.organization_id, hold.api_key_id)) is hold:
                        log.error("bulk hold %s was taken by the reaper; starting another", hold.id)
                        del self._open[(hold.organization_id, hold.api_key_id)]

    def forget(self) -> None:
        """Drop every hold from memory without touching the database (tests: the database under
        them was emptied)."""
        with self._lock:
            self._open.clear()
            self._by_id.clear()
            self._closing.clear()


holds = Holds()
