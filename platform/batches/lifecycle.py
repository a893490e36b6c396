"""The one module that changes batches and their request rows.

    validating → in_progress → finalizing → completed
         │            │ (its window ends)  → expired       (partial output)
         ↓            ↓ cancel
       failed     cancelling → cancelled                   (partial output)

A request row is claimed under a lease (`claim`), and its answer is recorded together with its
ledger row in one transaction (`record`): a lease that ran out (its runner died) is claimed again,
and the ledger's unique request id makes a second answer of the same line bill nothing and write
nothing. A batch whose rows have all ended, or that was cancelled or ran out of time, is ended
(`due_to_end`, `finalize`): its output and error files are written, and what its budget hold
still holds beyond what was charged is given back.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta

import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from batches.models import Batch, BatchRequest
from billing import budgets
from billing import services as billing
from fine_tuning import services as files
from fine_tuning.models import File

log = logging.getLogger("batches")
Status = Batch.Status
RowStatus = BatchRequest.Status
ENDED = (Status.COMPLETED, Status.FAILED, Status.EXPIRED, Status.CANCELLED)
# A batch's window, plus room for the requests running when it ends: how long its hold lives.
HOLD_SLACK_SECONDS = 3600


def window_seconds(completion_window: str) -> int:
    return int(completion_window.removesuffix("h")) * 3600


@dataclass(frozen=True)
class NewBatch:
    """What a batch is created with, whatever it starts as."""

    id: str
    organization_id: int
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict | None
    api_key_id: str | None
    user_id: int | None

    def _create(self, status: str, **fields) -> Batch:
        now = timezone.now()
        return Batch.all_orgs.create(
            id=self.id,
            organization_id=self.organization_id,
            endpoint=self.endpoint,
            input_file_id=self.input_file_id,
            completion_window=self.completion_window,
            metadata=self.metadata,
            created_by_key_id=self.api_key_id,
            created_by_id=self.user_id,
            status=status,
            created_at=now,
            expires_at=now + timedelta(seconds=window_seconds(self.completion_window)),
            **fields,
        )


def _add_requests(batch: Batch, requests: list[tuple[int, str, dict]]) -> None:
    BatchRequest.all_orgs.bulk_create(
        [
            BatchRequest(organization_id=batch.organization_id, batch=batch, line=line, custom_id=cid, body=body)
            for line, cid, body in requests
        ],
        batch_size=1000,
    )


@transaction.atomic
def create(new: NewBatch, *, requests: list[tuple[int, str, dict]], worst_case: int, models_used: list[str]) -> Batch:
    """A batch that starts at once: its worst case held against the budgets (raises
    budgets.InsufficientQuota, and nothing is created), its request rows written."""
    new._create(Status.VALIDATING)
    return start_validated(new.id, requests=requests, worst_case=worst_case, models_used=models_used)


def create_failed(new: NewBatch, *, errors: list[dict]) -> Batch:
    """A batch whose input cannot run (a bad line, a request its model refuses): failed, with the
    errors naming their lines, and nothing held or run."""
    return new._create(Status.FAILED, errors=errors, failed_at=timezone.now())


def create_validating(new: NewBatch) -> Batch:
    """A batch whose input file is still being validated: it is checked again (`start_validated`)
    once the file's validation has ended."""
    return new._create(Status.VALIDATING)


def fail_validating(batch_id: str, errors: list[dict]) -> bool:
    now = timezone.now()
    return bool(
        Batch.all_orgs.filter(pk=batch_id, status=Status.VALIDATING).update(
            status=Status.FAILED, errors=errors, failed_at=now
        )
    )


@transaction.atomic
def start_validated(batch_id: str, *, requests: list[tuple[int, str, dict]], worst_case: int, models_used: list[str]):
    """A validating batch whose file has been validated: its worst case held against the budgets
    (raises budgets.InsufficientQuota, changing nothing), its request rows written, started."""
    batch = Batch.all_orgs.select_for_update().filter(pk=batch_id, status=Status.VALIDATING).first()
    if batch is None:
        return None
    now = timezone.now()
    billing.reserve(
        request_id=batch.hold_id,
        organization_id=batch.organization_id,
        api_key_id=str(batch.created_by_key_id) if batch.created_by_key_id else None,
        amount=worst_case,
        ttl_seconds=int((batch.expires_at - now).total_seconds()) + HOLD_SLACK_SECONDS,
    )
    started = {"total": len(requests), "held": worst_case, "models_used": models_used, "in_progress_at": now}
    Batch.all_orgs.filter(pk=batch_id).update(status=Status.IN_PROGRESS, **started)
    _add_requests(batch, requests)
    for name, value in {"status": Status.IN_PROGRESS, **started}.items():
        setattr(batch, name, value)
    return batch


@transaction.atomic
def cancel(organization_id: int, batch_id: str) -> tuple[Batch | None, bool]:
    """Stop starting its requests; those running finish (and are billed). Cancelling a batch that
    is cancelling or cancelled already changes nothing. Returns the batch (None: the organization
    has no such batch) and whether this call cancelled it."""
    batch = Batch.all_orgs.select_for_update().filter(pk=batch_id, organization_id=organization_id).first()
    if batch is None or batch.status not in (Status.VALIDATING, Status.IN_PROGRESS):
        return batch, False
    batch.status, batch.cancelling_at = Status.CANCELLING, timezone.now()
    Batch.all_orgs.filter(pk=batch_id).update(status=batch.status, cancelling_at=batch.cancelling_at)
    return batch, True


# --- Running the requests -----------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    row_id: int
    batch_id: str
    organization_id: int
    api_key_id: str | None
    endpoint: str
    created_at: object  # the batch's: the price in effect then is what it pays
    body: dict
    attempts: int
    request_id: str


def claim(owner: str, limit: int) -> list[Claim]:
    """Up to `limit` requests to run, oldest batch first: pending ones that are due, and running
    ones whose runner's lease ran out. Each is leased to `owner` for BATCH_LEASE_SECONDS."""
    if limit <= 0:
        return []
    now = timezone.now()
    with transaction.atomic():
        due = (
            BatchRequest.all_orgs.select_for_update(skip_locked=True, of=("self",))
            .filter(batch__status=Status.IN_PROGRESS, batch__expires_at__gt=now)
            .filter(
                Q(status=RowStatus.PENDING, not_before=None)
                | Q(status=RowStatus.PENDING, not_before__lte=now)
                | Q(status=RowStatus.RUNNING, lease_expires_at__lt=now)
            )
            .select_related("batch")
            .order_by("batch__created_at", "batch_id", "line")[:limit]
        )
        rows = list(due)
        if not rows:
            return []
        BatchRequest.all_orgs.filter(pk__in=[r.pk for r in rows]).update(
            status=RowStatus.RUNNING,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=settings.BATCH_LEASE_SECONDS),
            attempts=F("attempts") + 1,
        )
    return [
        Claim(
            row.pk,
            row.batch_id,
            row.organization_id,
            str(row.batch.created_by_key_id) if row.batch.created_by_key_id else None,
            row.batch.endpoint,
            row.batch.created_at,
            row.body,
            row.attempts + 1,
            row.request_id,
        )
        for row in rows
    ]


def put_back(claim: Claim, owner: str, *, delay_seconds: float, counts: bool = True) -> None:
    """A request that could not run now (no replica, a server failure): pending again, due after
    `delay_seconds`; an attempt that did not count (no replica could take it) is not counted."""
    update = {
        "status": RowStatus.PENDING,
        "lease_owner": "",
        "lease_expires_at": None,
        "not_before": timezone.now() + timedelta(seconds=delay_seconds),
    }
    if not counts:
        update["attempts"] = F("attempts") - 1
    BatchRequest.all_orgs.filter(pk=claim.row_id, status=RowStatus.RUNNING, lease_owner=owner).update(**update)


def renew_leases(owner: str, row_ids: list[int]) -> int:
    """Push back the lease of requests this runner is still running (a generation may outlast a
    lease); returns how many it still holds."""
    if not row_ids:
        return 0
    return BatchRequest.all_orgs.filter(pk__in=row_ids, status=RowStatus.RUNNING, lease_owner=owner).update(
        lease_expires_at=timezone.now() + timedelta(seconds=settings.BATCH_LEASE_SECONDS)
    )


def release_leases(owner: str) -> int:
    """A runner that stops gives its running requests back at once (not after their lease)."""
    return BatchRequest.all_orgs.filter(status=RowStatus.RUNNING, lease_owner=owner).update(
        status=RowStatus.PENDING, lease_owner="", lease_expires_at=None, attempts=F("attempts") - 1
    )


def record(claim: Claim, owner: str, *, status_code: int, body: dict, usage: dict | None) -> bool:
    """The answer of a claimed request, with its ledger row (`usage`: a billing usage record, or
    None when nothing was used), in one transaction. False, and nothing written: the lease was lost
    (another runner has the request now) or the request ended already."""
    with transaction.atomic():
        row = (
            BatchRequest.all_orgs.select_for_update()
            .filter(pk=claim.row_id, status=RowStatus.RUNNING, lease_owner=owner)
            .first()
        )
        if row is None:
            return False
        if usage is not None:
            billing.record_usage(**usage)
        ok = 200 <= status_code < 300
        BatchRequest.all_orgs.filter(pk=row.pk).update(
            status=RowStatus.SUCCEEDED if ok else RowStatus.FAILED,
            status_code=status_code,
            response=body,
            lease_owner="",
            lease_expires_at=None,
            finished_at=timezone.now(),
        )
        tokens = usage or {}
        Batch.all_orgs.filter(pk=claim.batch_id).update(
            completed=F("completed") + int(ok),
            failed=F("failed") + int(not ok),
            input_tokens=F("input_tokens") + tokens.get("prompt_tokens", 0),
            cached_tokens=F("cached_tokens") + tokens.get("cached_tokens", 0),
            output_tokens=F("output_tokens") + tokens.get("completion_tokens", 0),
        )
    return True


# --- Ending batches ------------------------------------------------------------------------------


def due_to_end() -> list[str]:
    """Batches whose requests have all ended, that were cancelled, or whose window is over."""
    now = timezone.now()
    # Per batch in progress, on the (batch, status) index: not a scan of every open row.
    open_rows = BatchRequest.all_orgs.filter(batch=OuterRef("pk"), status__in=[RowStatus.PENDING, RowStatus.RUNNING])
    finished = Batch.all_orgs.filter(status=Status.IN_PROGRESS).exclude(Exists(open_rows))
    stopped = Batch.all_orgs.filter(
        Q(status__in=[Status.CANCELLING, Status.FINALIZING])
        | Q(status__in=[Status.IN_PROGRESS, Status.VALIDATING], expires_at__lte=now)
    )
    return sorted(set(finished.values_list("pk", flat=True)) | set(stopped.values_list("pk", flat=True)))[:100]


def finalize(batch_id: str) -> Batch | None:
    """End one batch if it can end now: requests not started are not run; once none is running
    (or their runners' leases ran out), the output and error files are written and the hold given
    back. Idempotent and safe beside another runner doing the same."""
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.all_orgs.select_for_update().filter(pk=batch_id).first()
        if batch is None or batch.status in ENDED:
            return batch
        expired = batch.expires_at <= now and batch.status in (Status.IN_PROGRESS, Status.VALIDATING)
        stopping = batch.status == Status.CANCELLING or expired
        rows = BatchRequest.all_orgs.filter(batch=batch)
        if stopping:
            rows.filter(status=RowStatus.PENDING).update(status=RowStatus.NOT_RUN, finished_at=now)
        if rows.filter(status=RowStatus.RUNNING, lease_expires_at__gte=now).exists():
            return batch  # answers still coming: they are written, and billed, before the files
        rows.filter(status__in=[RowStatus.PENDING, RowStatus.RUNNING]).update(status=RowStatus.NOT_RUN, finished_at=now)
        if batch.status == Status.IN_PROGRESS and not expired:
            batch.status, batch.finalizing_at = Status.FINALIZING, now
            Batch.all_orgs.filter(pk=batch_id).update(status=batch.status, finalizing_at=now)
    # The files are written in a transaction of their own (a large batch's take a while): a
    # runner that dies meanwhile leaves the batch finalizing (or cancelling), and the next pass
    # writes them again.
    with transaction.atomic():
        batch = Batch.all_orgs.select_for_update().filter(pk=batch_id).first()
        if batch is None or batch.status in ENDED:
            return batch
        why = "batch_cancelled" if batch.status == Status.CANCELLING else "batch_expired"
        output, errors = _files(batch, why)
        end = {
            Status.CANCELLING: (Status.CANCELLED, "cancelled_at"),
            Status.FINALIZING: (Status.COMPLETED, "completed_at"),
        }.get(batch.status, (Status.EXPIRED, "expired_at"))
        Batch.all_orgs.filter(pk=batch_id).update(
            status=end[0], **{end[1]: timezone.now()}, output_file=output, error_file=errors
        )
        budgets.shrink(batch.hold_id, batch.held, ttl_seconds=HOLD_SLACK_SECONDS, close=True)
    log.info("batch %s ended %s", batch_id, end[0])
    return Batch.all_orgs.get(pk=batch_id)


def _request_line_id(batch_id: str, line: int) -> str:
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:24]


def _files(batch: Batch, why: str) -> tuple[File | None, File | None]:
    """One line per request, in input order: answered ones in the output file, refused, failed
    and not run ones in the error file (no file where there is no line)."""
    output, errors = [], []
    not_run = {
        "batch_cancelled": "The batch was cancelled before this request ran.",
        "batch_expired": "The batch's completion window ended before this request ran.",
    }[why]
    for row in BatchRequest.all_orgs.filter(batch=batch).order_by("line").iterator(chunk_size=1000):
        line = {"id": _request_line_id(batch.id, row.line), "custom_id": row.custom_id}
        if row.status == RowStatus.NOT_RUN:
            errors.append({**line, "response": None, "error": {"code": why, "message": not_run}})
            continue
        response = {"status_code": row.status_code, "request_id": row.request_id, "body": row.response}
        (output if row.status == RowStatus.SUCCEEDED else errors).append({**line, "response": response, "error": None})

    def store(lines: list[dict], name: str) -> File | None:
        if not lines:
            return None
        content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        return files.store_output(
            organization_id=batch.organization_id,
            filename=f"{batch.id}_{name}.jsonl",
            content=content,
            purpose=File.Purpose.BATCH_OUTPUT,
        )

    return store(output, "output"), store(errors, "error")
