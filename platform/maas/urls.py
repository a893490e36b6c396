from django.conf import settings
from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from billing import webhooks as billing_webhooks
from frontend.views import account
from maas.pool_metrics import pool_metrics


def health(request):
    return JsonResponse({"status": "ok"})


urlpatterns = [
    # The back office's sign-in goes through the console's sign-in throttle.
    path(f"{settings.ADMIN_URL}login/", account.back_office_sign_in, name="back-office-sign-in"),
    path(settings.ADMIN_URL, admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include(("tenancy.api.urls", "api"))),
    path("api/", include(("fine_tuning.api.urls_api", "api-fine-tuning"))),
    path("api/", include(("billing.api.urls_api", "api-billing"))),
    path("api/", include(("serving.api.urls_api", "api-serving"))),
    # Fine-tuning and billing sit above serving in the layering, so they bring their own /v1/ routes, ahead of
    # the gateway's (which end in a catch-all for unknown URLs).
    path("v1/", include(("fine_tuning.api.urls_v1", "v1-fine-tuning"))),
    path("v1/", include(("batches.urls", "v1-batches"))),
    path("v1/", include(("billing.api.urls_v1", "v1-billing"))),
    path("v1/", include(("serving.gateway.urls", "v1"))),
    path("billing/webhooks/<slug:provider>/", billing_webhooks.receive, name="billing-webhook"),
    path("healthz", health, name="health"),
    path("metrics/pool", pool_metrics, name="pool-metrics"),
    path("", include("frontend.urls")),
]
