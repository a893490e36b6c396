from django.urls import path

from billing.api import usage_v1

urlpatterns = [
    path("organization/usage/completions", usage_v1.CompletionsUsageView.as_view(), name="usage-completions"),
    path("organization/usage/embeddings", usage_v1.EmbeddingsUsageView.as_view(), name="usage-embeddings"),
    path("organization/costs", usage_v1.CostsView.as_view(), name="costs"),
]
