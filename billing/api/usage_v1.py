"""/v1/organization/usage/completions, /v1/organization/usage/embeddings and /v1/organization/costs
for an API key with the billing:read scope (OpenAI serves these to admin keys): the key's own
organization only."""

from __future__ import annotations

from rest_framework.response import Response
from rest_framework.views import APIView

from billing.api import usage
from billing.models import UsageEvent
from tenancy.api.scoping import KeyScopedMixin
from tenancy.roles import Scope


class CompletionsUsageView(KeyScopedMixin, APIView):
    model = UsageEvent
    required_scope = Scope.BILLING_READ
    costs = False
    usage_of = "completions"

    def get(self, request):
        organization_id = self.principal.organization_id
        return Response(usage.page(request.query_params, organization_id, costs=self.costs, usage_of=self.usage_of))


class EmbeddingsUsageView(CompletionsUsageView):
    usage_of = "embeddings"


class CostsView(CompletionsUsageView):
    costs = True
