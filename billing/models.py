from django.db import models
from django.utils import timezone

from tenancy.managers import TenantModel


class UsageEvent(TenantModel):
    """One row per API request, and one per fine-tuning job when it ends: the append-only ledger
    that metering and billing read.

    Unique on the server-generated request id (`train:<job id>` for a job), so a retried write can
    never count twice. Tokens are the server's own count, disconnect or not.
    """

    class Outcome(models.TextChoices):
        OK = "ok", "Completed"
        CLIENT_DISCONNECTED = "client_disconnected", "Client disconnected"
        UPSTREAM_ERROR = "upstream_error", "Upstream error"
        REJECTED = "rejected", "Rejected by the model server"
        FAILED = "failed", "Job failed"
        CANCELLED = "cancelled", "Job cancelled"

    id = models.BigAutoField(primary_key=True)
    request_id = models.CharField(max_length=64, unique=True)
    api_key = models.ForeignKey("tenancy.APIKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    endpoint = models.CharField(max_length=32)  # chat.completions | completions | fine_tuning.jobs
    model = models.CharField(max_length=200, help_text="The model id the caller asked for.")
    base_model = models.CharField(max_length=100)
    backend = models.CharField(max_length=200, blank=True, help_text="The replica that served it.")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    training_tokens = models.PositiveBigIntegerField(default=0)
    streamed = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField()
    outcome = models.CharField(max_length=32, choices=Outcome.choices)
    latency_ms = models.PositiveIntegerField()
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "created_at"], name="usage_org_time")]

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
