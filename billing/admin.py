from django import forms
from django.contrib import admin
from django.utils import timezone

from billing import money, services
from billing.models import (
    Account,
    Invoice,
    InvoiceLine,
    Notification,
    Payment,
    PaymentCustomer,
    Price,
    Reservation,
    UsageEvent,
    WebhookEvent,
)
from tenancy.admin import ReadOnlyAdmin
from tenancy.audit import Actor


@admin.register(UsageEvent)
class UsageEventAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "organization",
        "model",
        "route",
        "prompt_tokens",
        "completion_tokens",
        "training_tokens",
        "cost_display",
        "outcome",
        "status_code",
        "latency_ms",
        "streamed",
    ]
    list_filter = ["outcome", "route", "streamed"]
    search_fields = ["request_id", "model", "organization__slug"]
    list_select_related = ["organization"]
    date_hierarchy = "created_at"

    @admin.display(description="cost")
    def cost_display(self, obj: UsageEvent) -> str:
        return money.display(obj.cost)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # append-only


class PriceForm(forms.ModelForm):
    """Prices are entered per million tokens, in currency units, as the catalog shows them."""

    input_per_million = forms.DecimalField(min_value=0, max_digits=18, decimal_places=3)
    output_per_million = forms.DecimalField(min_value=0, max_digits=18, decimal_places=3)
    training_per_million = forms.DecimalField(min_value=0, max_digits=18, decimal_places=3)
    replica_minute = forms.DecimalField(
        required=False,
        min_value=0,
        max_digits=18,
        decimal_places=9,
        initial=0,
        help_text="Per replica-minute of a dedicated endpoint (empty: 0).",
    )
    batch_input_per_million = forms.DecimalField(
        required=False, min_value=0, max_digits=18, decimal_places=3, help_text="Batch API (empty: half the input)."
    )
    batch_output_per_million = forms.DecimalField(
        required=False, min_value=0, max_digits=18, decimal_places=3, help_text="Batch API (empty: half the output)."
    )
    input_cached_per_million = forms.DecimalField(
        required=False,
        min_value=0,
        max_digits=18,
        decimal_places=3,
        help_text="A prompt token the model server had cached (empty: half the input).",
    )

    class Meta:
        model = Price
        fields = ["organization", "model", "effective_from", "note"]

    def clean(self):
        data = super().clean()
        for name in (
            "input_per_million",
            "output_per_million",
            "training_per_million",
            "batch_input_per_million",
            "batch_output_per_million",
            "input_cached_per_million",
        ):
            if data.get(name) is not None:
                try:
                    money.per_token_from_per_million(data[name])
                except money.MoneyError as error:
                    self.add_error(name, str(error))
        if data.get("replica_minute") is not None:
            try:
                money.from_decimal(data["replica_minute"])
            except money.MoneyError as error:
                self.add_error("replica_minute", str(error))
        if data.get("model"):
            try:
                services.check_priceable(data["model"], data["organization"].pk if data.get("organization") else None)
            except services.BillingError as error:
                self.add_error("model", error.message)
        effective_from = data.get("effective_from")
        if effective_from is not None and effective_from < timezone.now() - services.PRICE_BACKDATE_SLACK:
            self.add_error("effective_from", "A price cannot take effect in the past.")
        return data


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    """A price is never edited: a change is a new version that takes effect from a moment on."""

    form = PriceForm
    list_display = [
        "model",
        "organization",
        "effective_from",
        "input",
        "output",
        "training",
        "replica",
        "batch",
        "created_by",
    ]
    list_filter = ["model"]
    search_fields = ["model", "organization__slug"]
    list_select_related = ["organization", "created_by"]

    @admin.display(description="input / 1M")
    def input(self, obj: Price) -> str:
        return money.per_million(obj.input_per_token)

    @admin.display(description="output / 1M")
    def output(self, obj: Price) -> str:
        return money.per_million(obj.output_per_token)

    @admin.display(description="training / 1M")
    def training(self, obj: Price) -> str:
        return money.per_million(obj.training_per_token)

    @admin.display(description="replica-minute")
    def replica(self, obj: Price) -> str:
        return money.exact(obj.replica_minute)

    @admin.display(description="batch in / out / 1M")
    def batch(self, obj: Price) -> str:
        return " / ".join(money.per_million(amount) for amount in obj.batch_amounts)

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False  # ledger rows name their version

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        saved = services.set_price(
            model=data["model"],
            organization_id=data["organization"].pk if data["organization"] else None,
            input_per_million=data["input_per_million"],
            output_per_million=data["output_per_million"],
            training_per_million=data["training_per_million"],
            replica_minute=data["replica_minute"] or 0,
            batch_input_per_million=data.get("batch_input_per_million"),
            batch_output_per_million=data.get("batch_output_per_million"),
            input_cached_per_million=data.get("input_cached_per_million"),
            effective_from=data["effective_from"],
            note=data["note"],
            actor=Actor.from_request(request),
        )
        obj.pk = saved.pk


class AccountForm(forms.ModelForm):
    monthly_limit_amount = forms.DecimalField(
        required=False, min_value=0, max_digits=19, decimal_places=9, help_text="Empty: no monthly limit."
    )

    class Meta:
        model = Account
        fields = ["mode"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.monthly_limit is not None:
            self.initial["monthly_limit_amount"] = money.to_decimal(self.instance.monthly_limit)


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    """Mode and monthly limit are set here (audited); credit only through grant_credits."""

    form = AccountForm
    list_display = ["organization", "mode", "credit_display", "reserved_display", "limit_display", "spent_display"]
    list_filter = ["mode"]
    search_fields = ["organization__slug"]
    list_select_related = ["organization"]

    @admin.display(description="credit")
    def credit_display(self, obj: Account) -> str:
        return money.display(obj.credit)

    @admin.display(description="reserved")
    def reserved_display(self, obj: Account) -> str:
        return money.display(obj.reserved)

    @admin.display(description="monthly limit")
    def limit_display(self, obj: Account) -> str:
        return "—" if obj.monthly_limit is None else money.display(obj.monthly_limit)

    @admin.display(description="spent this month")
    def spent_display(self, obj: Account) -> str:
        return money.display(obj.period_spent)

    def has_add_permission(self, request):
        return False  # an account is made on first use

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        services.configure_account(
            obj.organization_id,
            mode=form.cleaned_data["mode"],
            monthly_limit=form.cleaned_data["monthly_limit_amount"],
            actor=Actor.from_request(request),
        )


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):  # released by its settle, or by the reaper
    list_display = ["request_id", "organization", "amount", "created_at", "expires_at"]
    search_fields = ["request_id", "organization__slug"]


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["created_at", "organization", "kind", "level", "title"]
    list_filter = ["kind", "level"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    fields = ["model", "meter", "quantity", "unit_price", "amount"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def get_queryset(self, request):
        return InvoiceLine.all_orgs.all()

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ["number", "organization", "period", "mode", "subtotal_display", "due_display", "status"]
    list_filter = ["status", "mode", "period"]
    search_fields = ["number", "organization__slug", "provider_invoice_id"]
    inlines = [InvoiceLineInline]

    @admin.display(description="subtotal")
    def subtotal_display(self, obj: Invoice) -> str:
        return money.display(obj.subtotal)

    @admin.display(description="amount due")
    def due_display(self, obj: Invoice) -> str:
        return money.display(obj.amount_due)


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "organization", "kind", "amount_display", "status", "provider_payment_id"]
    list_filter = ["kind", "status", "provider"]
    search_fields = ["provider_payment_id", "organization__slug"]

    @admin.display(description="amount")
    def amount_display(self, obj: Payment) -> str:
        return money.display(obj.amount, 2)


@admin.register(PaymentCustomer)
class PaymentCustomerAdmin(ReadOnlyAdmin):
    list_display = ["organization", "provider", "customer_id", "card_brand", "card_last4"]
    search_fields = ["customer_id", "organization__slug"]


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "provider", "type", "event_id", "status", "organization"]
    list_filter = ["provider", "status", "type"]
    search_fields = ["event_id"]
