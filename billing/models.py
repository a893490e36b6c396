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
    replica_minute = models.PositiveBigIntegerField(
        default=0, help_text="Nano-units per replica-minute of a dedicated endpoint serving the model."
    )
    # The Batch API's meter: requests run on idle capacity within a completion window.
    batch_input_per_token = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Nano-units per prompt token of a batch request; empty: half the input price."
    )
    batch_output_per_token = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Nano-units per completion token of a batch request; empty: half the output price.",
    )
    # Prompt tokens the model server had cached (a prefix it computed for an earlier call of the
    # same organization): they cost less to serve.
    input_cached_per_token = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Nano-units per cached prompt token; empty: half the input price."
    )
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

    @property
    def cached_amount(self) -> int:
        """What a cached prompt token costs: the price's own amount, else half the input price
        (rounded down to a nano-unit)."""
        return self.input_per_token // 2 if self.input_cached_per_token is None else self.input_cached_per_token

    @property
    def batch_amounts(self) -> tuple[int, int]:
        """What a batch request's prompt and completion tokens cost: the price's own batch amounts,
        else half the synchronous ones (rounded down to a nano-unit)."""
        return (
            self.input_per_token // 2 if self.batch_input_per_token is None else self.batch_input_per_token,
            self.output_per_token // 2 if self.batch_output_per_token is None else self.batch_output_per_token,
        )


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
    cached_tokens = models.PositiveIntegerField(
        default=0, help_text="Of the prompt tokens, those the server had cached."
    )
    completion_tokens = models.PositiveIntegerField(default=0)
    training_tokens = models.PositiveBigIntegerField(default=0)
    replica_minutes = models.PositiveBigIntegerField(default=0, help_text="A dedicated endpoint's metered time.")
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
    rolled_up = models.BooleanField(default=False, db_default=False, help_text="Counted in a UsageRollup row.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "created_at"], name="usage_org_time"),
            # What the rollup pass and the exact readers look for: few rows, a small index.
            models.Index(fields=["id"], condition=models.Q(rolled_up=False), name="usage_not_rolled_up"),
        ]

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __str__(self) -> str:
        return f"{self.request_id} ({self.model})"


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
    payment_failed_at = models.DateTimeField(
        null=True, blank=True, help_text="When a payment first failed; cleared by a successful one."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization"], name="one_account_per_org")]

    def __str__(self) -> str:
        return f"account of organization {self.organization_id} ({self.mode})"


class SignUpCredit(TenantModel):
    """The sign-up credit a person received, once: with their first organization's account."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    amount = models.BigIntegerField(help_text="Nano-units.")
    granted_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"sign-up credit of user {self.user_id}"


class KeySpendLimit(TenantModel):
    """A monthly spend limit on one API key, with its own reservations and spend."""

    api_key = models.OneToOneField("tenancy.APIKey", on_delete=models.CASCADE, related_name="+")
    monthly_limit = models.PositiveBigIntegerField(help_text="Nano-units a month.")
    reserved = models.PositiveBigIntegerField(default=0)
    period = models.DateField()
    period_spent = models.PositiveBigIntegerField(default=0)
    alerted_percent = models.PositiveSmallIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"monthly limit of key {self.api_key_id}"


class Reservation(TenantModel):
    """Money held against the organization's (and its key's) budget, of one of two kinds:

    - one fine-tune's estimated cost (`request_id` is `train:<job>`), until its ledger row settles
      it in the same transaction;
    - a web process's bulk hold (`bulk:<id>`), from which that process admits its requests in
      memory (billing.holds): the ledger rows of those requests charge `spent` of it; the process
      tops it up, renews it while it lives and releases what it does not use (`closed` then).

    The reaper releases what an expired row still holds (amount - spent): its process or job is gone."""

    request_id = models.CharField(max_length=64, unique=True)
    api_key = models.ForeignKey("tenancy.APIKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    amount = models.PositiveBigIntegerField()
    spent = models.PositiveBigIntegerField(default=0, help_text="Of a bulk hold: what its requests' rows charged.")
    closed = models.BooleanField(default=False, help_text="A bulk hold its process no longer draws from.")
    key_limited = models.BooleanField(default=False, help_text="Also held against the key's spend limit.")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"hold for {self.request_id}"


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

    def __str__(self) -> str:
        return self.title


class UsageRollup(TenantModel):
    """Hourly sums of the ledger, which the usage and cost APIs and the monthly close read instead of
    raw events. An event is added to exactly one rollup row, in the transaction that marks it
    `rolled_up` (billing.rollups), so rollups plus the events not yet rolled up are always exact.

    `billing_month` is the month whose invoice counts the row: the event's own month, or, for an
    event that arrived after its month was closed (a spool drained late), the first open month.
    """

    id = models.BigAutoField(primary_key=True)
    hour = models.DateTimeField()
    billing_month = models.DateField()
    route = models.CharField(max_length=32)
    model = models.CharField(max_length=200)
    api_key_id = models.CharField(max_length=36, blank=True, help_text="Kept after the key is deleted; '' for none.")
    endpoint_id = models.CharField(max_length=64, blank=True)
    price_version = models.PositiveBigIntegerField(default=0, help_text="The Price id charged; 0 for free.")
    requests = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    training_tokens = models.PositiveBigIntegerField(default=0)
    replica_minutes = models.PositiveBigIntegerField(default=0)
    input_cost = models.PositiveBigIntegerField(default=0)
    output_cost = models.PositiveBigIntegerField(default=0)
    training_cost = models.PositiveBigIntegerField(default=0)
    replica_cost = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)  # of prompt_tokens; input_cost is the others'
    cached_cost = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "organization",
                    "hour",
                    "billing_month",
                    "route",
                    "model",
                    "api_key_id",
                    "endpoint_id",
                    "price_version",
                ],
                name="one_rollup_per_group",
            )
        ]
        indexes = [models.Index(fields=["organization", "hour"], name="rollup_org_hour")]

    def __str__(self) -> str:
        return f"{self.model} {self.hour:%Y-%m-%d %H}:00"


class RollupLock(models.Model):
    """One row, updated first by every rollup pass and every monthly close: they take turns, so an
    event is never assigned to a month while that month is being closed."""

    taken_at = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"rollup turn taken at {self.taken_at}"


class Invoice(TenantModel):
    """One per organization and month, made by the monthly close from the month's rollups.

    Prepaid accounts paid as they went (their credit was debited request by request): the invoice
    is a statement, paid by credit. Invoiced accounts: remaining credit is applied, the rest is due
    and pushed to the payment provider.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        PAID = "paid", "Paid"
        UNCOLLECTIBLE = "uncollectible", "Uncollectible"
        VOID = "void", "Void"

    id = models.BigAutoField(primary_key=True)
    number = models.CharField(max_length=32, unique=True)
    period = models.DateField(help_text="The month invoiced (its first day).")
    mode = models.CharField(max_length=16, choices=Account.Mode.choices)
    currency = models.CharField(max_length=3)
    subtotal = models.PositiveBigIntegerField(help_text="Nano-units: the sum of the lines.")
    credits_applied = models.PositiveBigIntegerField(default=0)
    amount_due = models.PositiveBigIntegerField(default=0, help_text="Nano-units.")
    amount_paid = models.PositiveBigIntegerField(
        default=0, help_text="Nano-units of the amount due paid and not refunded or disputed since."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    provider = models.CharField(max_length=16, blank=True)
    provider_invoice_id = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period", "-id"]
        constraints = [models.UniqueConstraint(fields=["organization", "period"], name="one_invoice_per_month")]

    def __str__(self) -> str:
        return f"{self.number} ({self.status})"

    @property
    def outstanding(self) -> int:
        return max(0, self.amount_due - self.amount_paid)


class InvoiceLine(TenantModel):
    """A model's meter at one unit price: quantity in tokens, amount = quantity x unit price."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    model = models.CharField(max_length=200)
    # input | cached input | output | batch input | batch cached input | batch output | training | replica_minutes
    meter = models.CharField(max_length=32)
    unit_price = models.PositiveBigIntegerField(help_text="Nano-units per token.")
    quantity = models.PositiveBigIntegerField()
    amount = models.PositiveBigIntegerField()
    price_version = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["model", "meter", "unit_price", "id"]

    def __str__(self) -> str:
        return f"{self.model} {self.meter} x {self.quantity}"


class PaymentCustomer(TenantModel):
    """The organization as the payment provider's customer, with its saved card."""

    provider = models.CharField(max_length=16)
    customer_id = models.CharField(max_length=100)
    payment_method_id = models.CharField(max_length=100, blank=True)
    card_brand = models.CharField(max_length=20, blank=True)
    card_last4 = models.CharField(max_length=4, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "provider"], name="one_customer_per_provider")]

    def __str__(self) -> str:
        return f"{self.provider} customer of organization {self.organization_id}"


class Payment(TenantModel):
    """A charge at the payment provider: a credit top-up, or an invoice's payment. Its status moves
    only forward, under a row lock, so a success credits once however often it is reported."""

    class Kind(models.TextChoices):
        TOP_UP = "top_up", "Credit top-up"
        INVOICE = "invoice", "Invoice payment"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    provider = models.CharField(max_length=16)
    provider_payment_id = models.CharField(max_length=100, blank=True, db_index=True)
    invoice = models.ForeignKey(Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="payments")
    amount = models.PositiveBigIntegerField(help_text="Nano-units.")
    amount_minor = models.PositiveBigIntegerField(help_text="What the provider charges, in the currency's minor unit.")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    refunded_minor = models.PositiveBigIntegerField(default=0)
    disputed_minor = models.PositiveBigIntegerField(default=0, help_text="Taken back by a chargeback.")
    failure_message = models.CharField(max_length=300, blank=True)
    idempotency_key = models.CharField(
        max_length=200, blank=True, help_text="The caller's key: a request repeated with it makes no second charge."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="one_payment_per_idempotency_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.pk} ({self.status})"


class WebhookEvent(models.Model):
    """Each provider event once (unique on its id), with what became of it."""

    class Status(models.TextChoices):
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored"
        FAILED = "failed", "Failed"

    id = models.BigAutoField(primary_key=True)
    provider = models.CharField(max_length=16)
    event_id = models.CharField(max_length=100)
    type = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices)
    error = models.TextField(blank=True)
    organization = models.ForeignKey(
        "tenancy.Organization", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["provider", "event_id"], name="one_row_per_provider_event")]

    def __str__(self) -> str:
        return f"{self.provider} {self.type} {self.event_id}"
