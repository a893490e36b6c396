"""Files and datasets: upload, validation, deletion, dataset versions."""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Max, Sum
from django.utils import timezone

from catalog.loader import load_tokenizer
from catalog.models import BaseModel
from fine_tuning import batchfile, datafile
from fine_tuning.models import Dataset, DatasetVersion, File, new_file_id
from tenancy import audit, scope, shared_store, text
from tenancy import services as tenancy_services
from tenancy.audit import Actor
from tenancy.errors import Conflict, NotFound, ServiceError, TooManyRequests

log = logging.getLogger("fine_tuning")
UPLOAD_PURPOSES = (File.Purpose.FINE_TUNE, File.Purpose.BATCH)


def _key_for(organization_id: int, file_id: str) -> str:
    return f"files/{organization_id}/{file_id}"


@scope.scoped
@transaction.atomic
def upload_file(*, organization_id: int, uploaded, purpose: str, actor: Actor) -> File:
    """Store an uploaded file (already on disk, hashed) and queue its validation."""
    if purpose not in UPLOAD_PURPOSES:
        raise ServiceError(
            f"Unsupported purpose {purpose!r}; use one of: {', '.join(UPLOAD_PURPOSES)}.",
            "invalid_purpose",
            "purpose",
        )
    name = Path(uploaded.name or "upload.jsonl").name[:255]
    if not name.lower().endswith(".jsonl"):
        what = "Fine-tuning" if purpose == File.Purpose.FINE_TUNE else "Batch input"
        raise ServiceError(f"{what} files must be .jsonl, got {name!r}.", "invalid_file_format", "file")
    _count_upload(organization_id)
    quota = tenancy_services.lock_for_storage(organization_id)
    used = File.objects.filter(deleted_at=None).aggregate(n=Sum("bytes"))["n"] or 0
    if used + uploaded.size > quota:
        raise ServiceError(
            f"The organization's files would take {used + uploaded.size:,} bytes, more than its storage quota of "
            f"{quota:,} bytes ({used:,} in use). Delete files you no longer need, or ask the platform operator "
            "for a larger quota.",
            "storage_quota_exceeded",
            "file",
        )
    file_id = new_file_id()
    key = default_storage.save(_key_for(organization_id, file_id), uploaded)
    row = File.objects.create(
        id=file_id,
        organization_id=organization_id,
        purpose=purpose,
        filename=name,
        bytes=uploaded.size,
        sha256=uploaded.sha256,
        storage_key=key,
        created_by=actor.user,
        created_by_key_id=actor.api_key_id,
    )
    audit.record(
        "file.uploaded",
        actor=actor,
        organization_id=organization_id,
        target=row,
        data={"filename": name, "bytes": uploaded.size, "sha256": uploaded.sha256},
    )
    from fine_tuning.tasks import validate_file_task

    transaction.on_commit(lambda: validate_file_task.delay(organization_id, file_id))
    return row


def store_output(*, organization_id: int, filename: str, content: bytes, purpose: str) -> File:
    """A file the platform wrote for an organization (a batch's results): stored, and processed as
    it is (its lines are the platform's own). Call inside the transaction that publishes it."""
    file_id = new_file_id()
    key = default_storage.save(_key_for(organization_id, file_id), ContentFile(content))
    return File.all_orgs.create(
        id=file_id,
        organization_id=organization_id,
        purpose=purpose,
        filename=filename,
        bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        storage_key=key,
        status=File.Status.PROCESSED,
        validated_at=timezone.now(),
    )


def _upload_counter(organization_id: int) -> str:
    return f"uploads:{organization_id}:{int(time.time() // 3600)}"


def forget_upload_count(organization_id: int) -> None:
    shared_store.forget(_upload_counter(organization_id))


def _count_upload(organization_id: int) -> None:
    """At most FILE_UPLOADS_PER_HOUR uploads an organization and clock hour (counted on the shared
    store, so every web process counts together; an upload refused for its quota counts too)."""
    made = shared_store.hit(_upload_counter(organization_id), 3600)
    if made > settings.FILE_UPLOADS_PER_HOUR:
        wait = 3600 - int(time.time()) % 3600
        raise TooManyRequests(
            f"The organization has made {settings.FILE_UPLOADS_PER_HOUR} uploads this hour, the most allowed; "
            f"retry in {wait} s.",
            "too_many_uploads",
            retry_after=wait,
        )


VALIDATION_RESEND_SECONDS = 120


def resend_stuck_validations() -> int:
    """Files still `uploaded` a while after their upload lost their validation message (a broker
    that restarted without keeping its queue, say): send it again, at most once per interval
    each (validation is idempotent: only a file still `uploaded` takes its result)."""
    from fine_tuning.tasks import validate_file_task

    cutoff = timezone.now() - timedelta(seconds=VALIDATION_RESEND_SECONDS)
    stuck = File.all_orgs.filter(status=File.Status.UPLOADED, deleted_at=None, created_at__lt=cutoff)
    sent = 0
    for organization_id, file_id in stuck.values_list("organization_id", "pk")[:200]:
        if shared_store.add(f"validation-resent:{file_id}", 1, VALIDATION_RESEND_SECONDS):
            validate_file_task.delay(organization_id, file_id)
            sent += 1
    if sent:
        log.warning("sent the validation of %d file(s) again", sent)
    return sent


@functools.lru_cache(maxsize=4)
def _tokenizer(model_id: str):
    model = BaseModel.objects.get(pk=model_id)
    return load_tokenizer(model.source, settings.MODEL_CACHE_DIR, chat_template=model.chat_template or None)


def reference_model() -> BaseModel:
    return BaseModel.objects.get(pk=settings.FINE_TUNING_REFERENCE_MODEL)


def validate_file(file_id: str) -> File:
    """Check every line; store the report. Idempotent: a file is validated once."""
    row = File.objects.get(pk=file_id)
    if row.status != File.Status.UPLOADED:
        return row
    # Training data is measured against the reference model's tokenizer; batch requests name their own models.
    model = reference_model() if row.purpose == File.Purpose.FINE_TUNE else None
    try:
        with default_storage.open(row.storage_key, "rb") as stream:
            if row.purpose == File.Purpose.BATCH:
                report = batchfile.validate(stream, max_line_bytes=settings.FINE_TUNING_MAX_LINE_BYTES)
            else:
                report = datafile.validate(
                    stream,
                    tokenizer=_tokenizer(model.pk),
                    max_tokens_per_example=model.context_length,
                    max_line_bytes=settings.FINE_TUNING_MAX_LINE_BYTES,
                )
    except Exception:  # a file must never stay "uploaded" forever: it ends in error, with a reason
        # The exception (paths, internals) is for the operator's log; the tenant reads what to do.
        log.exception("validating %s failed", file_id)
        File.objects.filter(pk=file_id, status=File.Status.UPLOADED).update(
            status=File.Status.ERROR,
            status_details=(
                f"The platform failed while validating this file (not a problem found in it). Upload it again, "
                f"or ask the platform operator, naming {file_id}."
            ),
            validated_at=timezone.now(),
        )
        return File.objects.get(pk=file_id)
    details = report.summary()
    File.objects.filter(pk=file_id, status=File.Status.UPLOADED).update(
        status=File.Status.PROCESSED if report.ok else File.Status.ERROR,
        status_details=details,
        format=report.format,
        validated_at=timezone.now(),
        report={**report.as_dict(), "reference_model": model.pk} if model else report.as_dict(),
    )
    return File.objects.get(pk=file_id)


@scope.scoped
@transaction.atomic
def delete_file(file_id: str, *, organization_id: int, actor: Actor) -> File:
    row = File.objects.select_for_update().filter(pk=file_id, deleted_at=None).first()
    if row is None:
        raise NotFound("No such file.", "not_found")
    if DatasetVersion.objects.filter(file=row).exists():
        raise Conflict(
            "The file is a dataset version; it is kept for the record of what was trained.", "file_in_dataset"
        )
    row.deleted_at = timezone.now()
    row.save(update_fields=["deleted_at"])
    audit.record(
        "file.deleted", actor=actor, organization_id=organization_id, target=row, data={"filename": row.filename}
    )
    key = row.storage_key
    transaction.on_commit(lambda: default_storage.delete(key))
    return row


@scope.scoped
@transaction.atomic
def create_dataset(*, organization_id: int, name: str, description: str = "", actor: Actor) -> Dataset:
    name = text.name(name, what="A dataset's name")
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(organization_id=organization_id, name=name, description=description)
    except IntegrityError:
        raise Conflict(f"A dataset named {name!r} exists already.", "dataset_exists", "name") from None
    audit.record("dataset.created", actor=actor, organization_id=organization_id, target=dataset, data={"name": name})
    return dataset


@scope.scoped
@transaction.atomic
def add_dataset_version(
    dataset_id: str, *, organization_id: int, file_id: str, note: str = "", actor: Actor
) -> DatasetVersion:
    dataset = Dataset.objects.select_for_update().filter(pk=dataset_id).first()
    if dataset is None:
        raise ServiceError("No such dataset.", "not_found")
    file = File.objects.filter(pk=file_id, deleted_at=None).first()
    if file is None:
        raise NotFound(f"No such file: {file_id}.", "file_not_found", "file_id")
    if file.purpose != File.Purpose.FINE_TUNE:
        raise ServiceError(
            f"The file {file_id} holds {file.get_purpose_display().lower()}; a dataset holds training data.",
            "invalid_file",
            "file_id",
        )
    if file.status != File.Status.PROCESSED:
        raise ServiceError(
            f"The file {file_id} is {file.status}; only validated files can be dataset versions.",
            "file_not_processed",
            "file_id",
        )
    number = (DatasetVersion.objects.filter(dataset=dataset).aggregate(n=Max("number"))["n"] or 0) + 1
    version = DatasetVersion.objects.create(
        organization_id=organization_id, dataset=dataset, number=number, file=file, note=note
    )
    audit.record(
        "dataset.version_added",
        actor=actor,
        organization_id=organization_id,
        target=version,
        data={"dataset": dataset.pk, "number": number, "file": file_id},
    )
    return version
