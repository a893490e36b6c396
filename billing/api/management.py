"""Management API: an organization's billing account (mode, credit, limit, this month's spend) and
its notifications, for the console."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import exceptions, mixins, serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from billing import budgets, money, paying, reports, services
from billing import selectors as billing_selectors
from billing.api import usage
from billing.models import (
    Account,
    Invoice,
    InvoiceLine,
    KeySpendLimit,
    Notification,
    Payment,
    PaymentCustomer,
    UsageEvent,
)
from billing.payments import get_provider
from tenancy import selectors
from tenancy.api.scoping import ORG_PARAMETER, OrgScopedViewSet
from tenancy.models import APIKey
from tenancy.roles import Permission as P

org_param = extend_schema(parameters=[ORG_PARAMETER])


@extend_schema_field(OpenApiTypes.STR)
class AmountField(serializers.Field):
    """A nano-unit amount shown as an exact decimal string of the billing currency."""

    def __init__(self, **kwargs):
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)

    def to_representation(self, nanos):
        return money.exact(nanos)


class LimitSerializer(serializers.Serializer):
    monthly_limit = serializers.DecimalField(
        max_digits=21,
        decimal_places=9,
        min_value=0,
        allow_null=True,
        coerce_to_string=True,
        help_text="A decimal amount of the billing currency a month; null removes the limit.",
    )


class AccountSerializer(serializers.ModelSerializer):
    currency = serializers.SerializerMethodField()
    credit = AmountField()
    reserved = AmountField()
    available = serializers.SerializerMethodField()
    monthly_limit = AmountField(allow_null=True)
    spent_this_month = serializers.SerializerMethodField()

    class Meta:
        model = Account
        fields = ["mode", "currency", "credit", "reserved", "available", "monthly_limit", "period", "spent_this_month"]
        read_only_fields = fields

    def get_currency(self, account) -> str:
        return money.currency()

    def get_available(self, account) -> str:
        return money.exact(account.credit - account.reserved)

    def get_spent_this_month(self, account) -> str:
        current = budgets.period_of(self.context["now"])
        return money.exact(account.period_spent if account.period == current else 0)


@org_param
class AccountViewSet(OrgScopedViewSet):
    model = Account
    serializer_class = AccountSerializer
    permissions = {"*": P.BILLING_VIEW, "partial_update": P.BILLING_MANAGE}
    allow_suspended = True  # to see why, and to pay

    @extend_schema(responses=AccountSerializer, summary="The organization's billing account")
    def retrieve(self, request, org):
        account = budgets.ensure_account(self.organization.pk)
        return Response(AccountSerializer(account, context={"now": timezone.now()}).data)

    @extend_schema(
        request=LimitSerializer, responses=AccountSerializer, summary="Set or remove the monthly spend limit"
    )
    def partial_update(self, request, org):
        if "mode" in request.data:
            raise exceptions.ValidationError({"mode": ["The billing mode is set by the platform operator."]})
        body = LimitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        account = services.configure_account(
            self.organization.pk, monthly_limit=body.validated_data["monthly_limit"], actor=self.actor
        )
        return Response(AccountSerializer(account, context={"now": timezone.now()}).data)


class NotificationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Notification
        fields = ["id", "kind", "level", "title", "body", "data", "created_at", "read_at"]
        read_only_fields = fields


@org_param
class NotificationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    model = Notification
    serializer_class = NotificationSerializer
    permissions = {"*": P.BILLING_VIEW}
    allow_suspended = True  # to see why, and to pay


USAGE_PARAMETERS = [
    ORG_PARAMETER,
    OpenApiParameter("start_time", usage.TIME, required=True, description="Unix seconds, inclusive."),
    OpenApiParameter("end_time", usage.TIME, description="Unix seconds, exclusive; default now."),
    OpenApiParameter("bucket_width", str, enum=["1m", "1h", "1d"], description="Default 1d."),
    OpenApiParameter("group_by", str, many=True, enum=[*reports.DIMENSIONS, "project_id"]),
    OpenApiParameter("models", str, many=True),
    OpenApiParameter("api_key_ids", OpenApiTypes.UUID, many=True),
    OpenApiParameter("limit", usage.LIMIT, description="Buckets per page (at most 1440 of 1m, 168 of 1h, 31 of 1d)."),
    OpenApiParameter("page", usage.PAGE),
]


COST_PARAMETERS = [
    *(p for p in USAGE_PARAMETERS if p.name != "group_by"),
    OpenApiParameter("group_by", str, many=True, enum=[*reports.DIMENSIONS, "project_id", "line_item"]),
]


class CompletionsUsageView(OrgScopedViewSet):
    """The organization's completions usage in buckets, as /v1/organization/usage/completions."""

    model = UsageEvent
    permissions = {"*": P.BILLING_VIEW}
    costs = False
    usage_of = "completions"

    @extend_schema(parameters=USAGE_PARAMETERS, responses=OpenApiTypes.OBJECT, summary="Usage or costs in buckets")
    def retrieve(self, request, org):
        page = usage.page(request.query_params, self.organization.pk, costs=self.costs, usage_of=self.usage_of)
        return Response(page)


class EmbeddingsUsageView(CompletionsUsageView):
    """The organization's embeddings usage in buckets, as /v1/organization/usage/embeddings."""

    usage_of = "embeddings"


class CostsView(CompletionsUsageView):
    """The organization's costs in buckets, as /v1/organization/costs."""

    costs = True

    @extend_schema(parameters=COST_PARAMETERS, responses=OpenApiTypes.OBJECT, summary="Costs in buckets")
    def retrieve(self, request, org):
        return super().retrieve(request, org)


class InvoiceLineSerializer(serializers.ModelSerializer):
    """`quantity` counts `unit`s (tokens, or replica-minutes of a dedicated endpoint); `unit_price`
    is per unit, exact; token lines also give it per million, as prices are shown."""

    unit = serializers.SerializerMethodField()
    unit_price = AmountField()
    unit_price_per_million = serializers.SerializerMethodField()
    amount = AmountField()

    class Meta:
        model = InvoiceLine
        fields = ["model", "meter", "quantity", "unit", "unit_price", "unit_price_per_million", "amount"]
        read_only_fields = fields

    def get_unit(self, line) -> str:
        return "replica_minute" if line.meter == "replica_minutes" else "token"

    def get_unit_price_per_million(self, line) -> str | None:
        return None if line.meter == "replica_minutes" else money.per_million(line.unit_price)


class InvoiceSerializer(serializers.ModelSerializer):
    period = serializers.SerializerMethodField()
    subtotal = AmountField()
    credits_applied = AmountField()
    amount_due = AmountField()
    lines = InvoiceLineSerializer(many=True, read_only=True)

    class Meta:
        model = Invoice
        fields = [
            "id",
            "number",
            "period",
            "mode",
            "currency",
            "subtotal",
            "credits_applied",
            "amount_due",
            "status",
            "created_at",
            "paid_at",
            "lines",
        ]
        read_only_fields = fields

    def get_period(self, invoice) -> str:
        return f"{invoice.period:%Y-%m}"


class PaymentSerializer(serializers.ModelSerializer):
    amount = AmountField()
    invoice = serializers.SerializerMethodField()

    class Meta:
        model = Payment
        fields = ["id", "kind", "amount", "currency", "status", "failure_message", "invoice", "created_at"]
        read_only_fields = fields

    def get_invoice(self, payment) -> str | None:
        return payment.invoice.number if payment.invoice_id else None


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Repeating the request with the same key (a retry after a timeout, a double submit) answers "
    "the payment made the first time and charges nothing more.",
)


@org_param
class InvoiceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    model = Invoice
    serializer_class = InvoiceSerializer
    permissions = {"*": P.BILLING_VIEW}  # paying needs BILLING_MANAGE, checked once the invoice is found
    allow_suspended = True  # to see why, and to pay

    def get_queryset(self):
        return super().get_queryset().prefetch_related("lines")

    @extend_schema(
        request=None,
        responses=PaymentSerializer,
        parameters=[IDEMPOTENCY_KEY],
        summary="Pay an open invoice with the saved card now",
    )
    @action(detail=True, methods=["post"])
    def pay(self, request, org, pk=None):
        invoice = self.get_object()  # another organization's invoice: 404 before anything else
        if not self.access.can(P.BILLING_MANAGE):
            raise exceptions.PermissionDenied("Your role or key does not allow paying invoices.")
        payment = paying.retry_invoice_payment(
            invoice.pk,
            organization_id=self.organization.pk,
            actor=self.actor,
            idempotency_key=request.headers.get("Idempotency-Key", ""),
        )
        return Response(PaymentSerializer(payment).data, status=201)


@org_param
class PaymentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    model = Payment
    serializer_class = PaymentSerializer
    permissions = {"*": P.BILLING_VIEW}
    allow_suspended = True  # to see why, and to pay

    def get_queryset(self):
        return super().get_queryset().select_related("invoice")


class TopUpSerializer(serializers.Serializer):
    amount = serializers.CharField(help_text='A decimal amount of the billing currency, e.g. "20.00".')


@org_param
class TopUpViewSet(OrgScopedViewSet):
    model = Payment
    permissions = {"*": P.BILLING_MANAGE}

    @extend_schema(
        request=TopUpSerializer,
        responses=PaymentSerializer,
        parameters=[IDEMPOTENCY_KEY],
        summary="Add prepaid credit with the saved card",
    )
    def create(self, request, org):
        body = TopUpSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        payment = paying.top_up(
            self.organization.pk,
            body.validated_data["amount"],
            actor=self.actor,
            idempotency_key=request.headers.get("Idempotency-Key", ""),
        )
        return Response(PaymentSerializer(payment).data, status=201)


class PaymentMethodSerializer(serializers.Serializer):
    payment_method = serializers.CharField(
        write_only=True, help_text="A payment method id the browser obtained from the provider (pm_...)."
    )
    provider = serializers.CharField(read_only=True)
    card_brand = serializers.CharField(read_only=True)
    card_last4 = serializers.CharField(read_only=True)


@org_param
class PaymentMethodViewSet(OrgScopedViewSet):
    model = PaymentCustomer
    permissions = {"retrieve": P.BILLING_VIEW, "update": P.BILLING_MANAGE}
    allow_suspended = True  # to see why, and to pay

    @extend_schema(responses=PaymentMethodSerializer, summary="The saved card")
    def retrieve(self, request, org):
        customer = self.get_queryset().filter(provider=get_provider().name).first()
        if customer is None or not customer.payment_method_id:
            raise exceptions.NotFound("No card is saved.")
        return Response(PaymentMethodSerializer(customer).data)

    @extend_schema(request=PaymentMethodSerializer, responses=PaymentMethodSerializer, summary="Save a card")
    def update(self, request, org):
        body = PaymentMethodSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        customer = paying.save_card(self.organization.pk, body.validated_data["payment_method"], actor=self.actor)
        return Response(PaymentMethodSerializer(customer).data)


@org_param
class PriceListViewSet(OrgScopedViewSet):
    """Every model the organization may call, with the price it pays now (its own negotiated price,
    or the list price; a fine-tuned model without a price of its own at its base model's)."""

    model = Account
    permissions = {"*": P.ORG_VIEW}

    @extend_schema(responses=OpenApiTypes.OBJECT, summary="The organization's price list")
    def retrieve(self, request, org):
        return Response({"object": "list", "data": billing_selectors.price_list(self.organization.pk)})


class KeyLimitSerializer(serializers.ModelSerializer):
    api_key_id = serializers.CharField(read_only=True)
    monthly_limit = AmountField()
    spent_this_month = serializers.SerializerMethodField()

    class Meta:
        model = KeySpendLimit
        fields = ["id", "api_key_id", "monthly_limit", "spent_this_month", "period"]
        read_only_fields = fields

    def get_spent_this_month(self, limit) -> str:
        return money.exact(limit.period_spent if limit.period == budgets.period_of(timezone.now()) else 0)


@org_param
class KeyLimitViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    """Monthly spend limits on API keys: PUT one on a key, DELETE to remove it."""

    model = KeySpendLimit
    serializer_class = KeyLimitSerializer
    permissions = {"*": P.BILLING_VIEW}  # changes need BILLING_MANAGE, checked once the key is found
    lookup_field = "api_key_id"
    cursor_field = "updated_at"

    def _key(self, api_key_id: str):
        canonical = selectors.key_id(api_key_id)
        key = APIKey.objects.filter(pk=canonical).first() if canonical else None
        if key is None:
            raise exceptions.NotFound("No such API key.")
        if not self.access.can(P.BILLING_MANAGE):
            raise exceptions.PermissionDenied("Your role or key does not allow changing spend limits.")
        return key

    @extend_schema(request=LimitSerializer, responses=KeyLimitSerializer, summary="Set a key's monthly spend limit")
    def update(self, request, org, api_key_id=None):
        key = self._key(api_key_id)
        body = LimitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if body.validated_data["monthly_limit"] is None:
            raise exceptions.ValidationError({"monthly_limit": ["DELETE removes a limit; PUT sets an amount."]})
        services.set_key_spend_limit(
            self.organization.pk, str(key.pk), body.validated_data["monthly_limit"], actor=self.actor
        )
        return Response(KeyLimitSerializer(KeySpendLimit.objects.get(api_key=key)).data)

    @extend_schema(responses={204: None}, summary="Remove a key's monthly spend limit")
    def destroy(self, request, org, api_key_id=None):
        key = self._key(api_key_id)
        services.set_key_spend_limit(self.organization.pk, str(key.pk), None, actor=self.actor)
        return Response(status=204)
