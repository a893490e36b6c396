"""A Batch API batch (OpenAI's Batch object) and one row per request line of its input file.

A request row is the unit of exactly-once work: it is claimed under a lease, and its answer is
stored in the same transaction that writes its ledger row (billing's request id is the row's
`request_id`), so a runner that dies mid-request leaves the row to be claimed again and the answer
is neither lost nor billed twice."""

from __future__ import annotations

import secrets

from django.db import models
from django.utils import timezone

from tenancy.managers import TenantModel


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


class Batch(TenantModel):
    class Status(models.TextChoices):
        VALIDATING = "validating", "Validating"
        FAILED = "failed", "Failed"
        IN_PROGRESS = "in_progress", "In progress"
        FINALIZING = "finalizing", "Finalizing"
        COMPLETED = "completed", "Completed"
        EXPIRED = "expired", "Expired"
        CANCELLING = "cancelling", "Cancelling"
        CANCELLED = "cancelled", "Cancelled"

    id = models.CharField(primary_key=True, max_length=40, default=new_batch_id, editable=False)
    endpoint = models.CharField(max_length=64)
    input_file = models.ForeignKey("fine_tuning.File", on_delete=models.PROTECT, related_name="+")
    completion_window = models.CharField(max_length=8, default="24h")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.VALIDATING)
    errors = models.JSONField(null=True, blank=True)  # [{code, message, param, line}]
    metadata = models.JSONField(null=True, blank=True)
    output_file = models.ForeignKey(
        "fine_tuning.File", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error_file = models.ForeignKey(
        "fine_tuning.File", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)  # of input_tokens
    output_tokens = models.BigIntegerField(default=0)
    held = models.BigIntegerField(default=0, help_text="The worst case held against the budgets (nano-units).")
    models_used = models.JSONField(default=list, blank=True)
    created_by_key = models.ForeignKey(
        "tenancy.APIKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey("accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="batch_org_created"),
            models.Index(fields=["status", "created_at"], name="batch_status"),
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def hold_id(self) -> str:
        return f"batch:{self.id}"


class BatchRequest(TenantModel):
    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"  # answered 2xx: a line of the output file
        FAILED = "failed"  # answered an error: a line of the error file
        NOT_RUN = "not_run"  # the batch was cancelled or expired first: a line of the error file

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="requests")
    line = models.PositiveIntegerField()
    custom_id = models.CharField(max_length=512)
    body = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    not_before = models.DateTimeField(null=True, blank=True, help_text="Retried no earlier than this.")
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["batch", "line"]
        constraints = [models.UniqueConstraint(fields=["batch", "line"], name="batch_request_line")]
        indexes = [models.Index(fields=["batch", "status"], name="batch_request_status")]

    def __str__(self) -> str:
        return self.request_id

    @property
    def request_id(self) -> str:
        """The ledger's id of this request: one row, however often it is attempted."""
        return f"{self.batch_id}:{self.line}"
