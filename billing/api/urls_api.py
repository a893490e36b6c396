from django.urls import path
from rest_framework.routers import SimpleRouter

from billing.api import management

router = SimpleRouter(trailing_slash="/?")
router.register(
    r"orgs/(?P<org>[a-z0-9-]+)/billing/notifications", management.NotificationViewSet, basename="notifications"
)
router.register(r"orgs/(?P<org>[a-z0-9-]+)/billing/invoices", management.InvoiceViewSet, basename="invoices")
router.register(r"orgs/(?P<org>[a-z0-9-]+)/billing/payments", management.PaymentViewSet, basename="payments")
router.register(r"orgs/(?P<org>[a-z0-9-]+)/billing/key-limits", management.KeyLimitViewSet, basename="key-limits")
account = management.AccountViewSet.as_view({"get": "retrieve", "patch": "partial_update"})
completions = management.CompletionsUsageView.as_view({"get": "retrieve"})
embeddings = management.EmbeddingsUsageView.as_view({"get": "retrieve"})
costs = management.CostsView.as_view({"get": "retrieve"})
prices = management.PriceListViewSet.as_view({"get": "retrieve"})
top_ups = management.TopUpViewSet.as_view({"post": "create"})
card = management.PaymentMethodViewSet.as_view({"get": "retrieve", "put": "update"})
urlpatterns = [
    path("orgs/<slug:org>/billing/account/", account, name="billing-account"),
    path("orgs/<slug:org>/billing/usage/completions/", completions, name="billing-usage-completions"),
    path("orgs/<slug:org>/billing/usage/embeddings/", embeddings, name="billing-usage-embeddings"),
    path("orgs/<slug:org>/billing/costs/", costs, name="billing-costs"),
    path("orgs/<slug:org>/billing/prices/", prices, name="billing-prices"),
    path("orgs/<slug:org>/billing/top-ups/", top_ups, name="billing-top-ups"),
    path("orgs/<slug:org>/billing/payment-method/", card, name="billing-payment-method"),
    *router.urls,
]
