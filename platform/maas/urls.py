from django.conf import settings
from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView


def health(request):
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path(settings.ADMIN_URL, admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include(("tenancy.api.urls", "api"))),
    path("api/", include(("fine_tuning.api.urls_api", "api-fine-tuning"))),
    path("api/", include(("billing.api.urls_api", "api-billing"))),
    # Fine-tuning sits above serving in the layering, so it brings its own /v1/ routes, ahead of
    # the gateway's (which end in a catch-all for unknown URLs).
    path("v1/", include(("fine_tuning.api.urls_v1", "v1-fine-tuning"))),
    path("v1/", include(("serving.gateway.urls", "v1"))),
    path("healthz", health, name="health"),
    path("", include("frontend.urls")),
]
