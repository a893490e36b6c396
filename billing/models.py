from django.conf import settings
from django.db import models
from django.utils import timezone

from tenancy.managers import TenantModel


class Price(models.Model):
    """One version of a model's price. Rows are never changed: a new price is a new row with the
    moment it takes effect, so the past is never repriced and every ledger row names the version it
    was charged at. Amounts are nano-units of BILLING_CURRENCY per token (see billing.money).

    `organization` empty: the list price, for everyone. Set: that organization's own price for the
    model (a negotiated rate), seen by that organization only. A fine-tuned model without a price of
    its own is charged at its base model's.
    """

    id = models.BigAutoField(primary_key=True)
    organization = models.ForeignKey(
        "tenancy.Organization", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    model = models.CharField(max_length=200, help_text="A catalog model id, base or ft:.")
    input_per_token = models.PositiveBigIntegerField(help_text="Nano-units per prompt token.")
    output_per_token = models.PositiveBigIntegerField(help_text="Nano-units per completion token.")
    training_per_token = models.PositiveBigIntegerField(help_text="Nano-units per trained token.")
    effective_from = models.DateTimeField(default=timezone.now)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["model", "organization_id", "-effective_from", "-id"]
        indexes = [models.Index(fields=["model", "effective_from"], name="price_model_from")]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d %H:%M}"


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
    route = models.CharField(max_length=32)  # the API route: chat.completions | completions | fine_tuning.jobs
    endpoint_id = models.CharField(max_length=64, blank=True, help_text="The published endpoint called, if any.")
    model = models.CharField(max_length=200, help_text="The model id the caller asked for.")
    base_model = models.CharField(max_length=100)
    backend = models.CharField(max_length=200, blank=True, help_text="The replica that served it.")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    training_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.PositiveBigIntegerField(default=0, help_text="Nano-units of BILLING_CURRENCY.")
    price = models.ForeignKey(
        Price, null=True, blank=True, on_delete=models.PROTECT, related_name="+", help_text="The version charged."
    )
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


class Account(TenantModel):
    """An organization's money: its prepaid credit, what in-flight requests have reserved, and its
    optional monthly spend limit with what this month has spent. Changed only by conditional
    UPDATEs (billing.budgets), never read-then-written.

    Prepaid: requests need credit (credit minus reservations must cover a request's worst case).
    Invoiced: usage is billed at the monthly close; only the limits apply.
    """

    class Mode(models.TextChoices):
        PREPAID = "prepaid", "Prepaid credit"
        INVOICED = "invoiced", "Invoiced monthly"

    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.PREPAID)
    credit = models.BigIntegerField(default=0, help_text="Nano-units. Below 0 only if a charge outran its reservation.")
    reserved = models.PositiveBigIntegerField(default=0, help_text="Nano-units held by in-flight requests.")
    monthly_limit = models.PositiveBigIntegerField(null=True, blank=True, help_text="Nano-units a month; empty: none.")
    period = models.DateField(help_text="The month (its first day) that period_spent counts.")
    period_spent = models.PositiveBigIntegerField(default=0)
    alerted_percent = models.PositiveSmallIntegerField(default=0, help_text="Highest limit alert sent this period.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization"], name="one_account_per_org")]


class KeySpendLimit(TenantModel):
    """A monthly spend limit on one API key, with its own reservations and spend."""

    api_key = models.OneToOneField("tenancy.APIKey", on_delete=models.CASCADE, related_name="+")
    monthly_limit = models.PositiveBigIntegerField(help_text="Nano-units a month.")
    reserved = models.PositiveBigIntegerField(default=0)
    period = models.DateField()
    period_spent = models.PositiveBigIntegerField(default=0)
    alerted_percent = models.PositiveSmallIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)


class Reservation(TenantModel):
    """The worst-case cost of a request in flight (or a running fine-tune), held against the
    organization's (and its key's) budget until its ledger row settles it, in the same transaction;
    the reaper releases those whose request is gone."""

    request_id = models.CharField(max_length=64, unique=True)
    api_key = models.ForeignKey("tenancy.APIKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    amount = models.PositiveBigIntegerField()
    key_limited = models.BooleanField(default=False, help_text="Also held against the key's spend limit.")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)


class Notification(TenantModel):
    """A notice for an organization's console (and, sent alongside, an email to its owners and
    admins): spend-limit alerts, payment problems."""

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=40)  # e.g. spend_limit
    level = models.CharField(max_length=16, default="warning")  # info | warning | critical
    title = models.CharField(max_length=200)
    body = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
