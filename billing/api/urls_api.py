from django.urls import path
from rest_framework.routers import SimpleRouter

from billing.api import management

router = SimpleRouter(trailing_slash="/?")
router.register(
    r"orgs/(?P<org>[a-z0-9-]+)/billing/notifications", management.NotificationViewSet, basename="notifications"
)
account = management.AccountViewSet.as_view({"get": "retrieve"})
urlpatterns = [path("orgs/<slug:org>/billing/account/", account, name="billing-account"), *router.urls]
