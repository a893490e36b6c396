"""Management API: an organization's billing account (mode, credit, limit, this month's spend) and
its notifications, for the console."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers
from rest_framework.response import Response

from billing import budgets, money
from billing.models import Account, Notification
from tenancy.api.scoping import ORG_PARAMETER, OrgScopedViewSet
from tenancy.roles import Permission as P

org_param = extend_schema(parameters=[ORG_PARAMETER])


def _amount(nanos: int | None) -> str | None:
    """Exact decimal strings, as prices are shown."""
    return None if nanos is None else str(money.to_decimal(nanos).normalize())


class AccountSerializer(serializers.ModelSerializer):
    currency = serializers.SerializerMethodField()
    credit = serializers.SerializerMethodField()
    reserved = serializers.SerializerMethodField()
    available = serializers.SerializerMethodField()
    monthly_limit = serializers.SerializerMethodField()
    spent_this_month = serializers.SerializerMethodField()

    class Meta:
        model = Account
        fields = ["mode", "currency", "credit", "reserved", "available", "monthly_limit", "period", "spent_this_month"]
        read_only_fields = fields

    def get_currency(self, account) -> str:
        return money.currency()

    def get_credit(self, account) -> str:
        return _amount(account.credit)

    def get_reserved(self, account) -> str:
        return _amount(account.reserved)

    def get_available(self, account) -> str:
        return _amount(account.credit - account.reserved)

    def get_monthly_limit(self, account) -> str | None:
        return _amount(account.monthly_limit)

    def get_spent_this_month(self, account) -> str:
        current = budgets.period_of(self.context["now"])
        return _amount(account.period_spent if account.period == current else 0)


@org_param
class AccountViewSet(OrgScopedViewSet):
    model = Account
    serializer_class = AccountSerializer
    permissions = {"*": P.BILLING_VIEW}

    @extend_schema(responses=AccountSerializer, summary="The organization's billing account")
    def retrieve(self, request, org):
        from django.utils import timezone

        account = budgets.ensure_account(self.organization.pk)
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
