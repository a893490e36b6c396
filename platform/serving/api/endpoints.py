"""Management API for endpoints: /api/orgs/{org}/endpoints/ — publish a model (base or ft:) as
`ep-…`, change its settings, stop, start, delete. Owners, admins and their keys with
`endpoints:write` manage; viewers, members and `endpoints:read` keys see."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, mixins, serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from serving import endpoint_metrics, endpoints, selectors
from serving.models import Endpoint, EndpointReplica
from tenancy.api.scoping import ORG_PARAMETER, OrgScopedViewSet
from tenancy.api.serializers import OneLine
from tenancy.roles import Permission as P

SETTINGS = [
    "name",
    "defaults",
    "system_prompt",
    "rpm_limit",
    "tpm_limit",
    "max_tokens_cap",
    "allowed_key_ids",
    "billing_mode",
    "replicas",
]


class PlacementSerializer(serializers.ModelSerializer):
    replica = serializers.CharField(source="backend.name")

    class Meta:
        model = EndpointReplica
        fields = ["replica", "state", "last_error", "probed_at"]


class EndpointSerializer(serializers.ModelSerializer):
    placements = serializers.SerializerMethodField()

    class Meta:
        model = Endpoint
        fields = ["id", "model", "status", "status_reason", *SETTINGS, "placements", "created_at", "updated_at"]
        read_only_fields = ["id", "status", "status_reason", "placements", "created_at", "updated_at"]
        extra_kwargs = {
            "defaults": {"required": False},
            "allowed_key_ids": {"required": False},
            "name": {"validators": [OneLine()]},
            # The bounds serving.endpoints checks, stated in the document.
            **{
                field: {"min_value": 1, "max_value": endpoints.INT32}
                for field in ("rpm_limit", "tpm_limit", "max_tokens_cap")
            },
            "replicas": {"min_value": 1, "max_value": endpoints.MAX_REPLICAS},
        }

    def get_placements(self, endpoint) -> list[dict]:
        return PlacementSerializer(endpoint.placements.all(), many=True).data


@extend_schema(parameters=[ORG_PARAMETER])
class EndpointViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    OrgScopedViewSet,
):
    model = Endpoint
    serializer_class = EndpointSerializer
    permissions = {
        "list": P.ENDPOINTS_VIEW,
        "retrieve": P.ENDPOINTS_VIEW,
        "create": P.ENDPOINTS_MANAGE,
        "update": P.ENDPOINTS_MANAGE,
        "partial_update": P.ENDPOINTS_MANAGE,
        "destroy": P.ENDPOINTS_MANAGE,
        "stop": P.ENDPOINTS_MANAGE,
        "start": P.ENDPOINTS_MANAGE,
        "metrics": P.ENDPOINTS_VIEW,
    }

    def get_queryset(self):
        return selectors.live_endpoints(self.organization.pk)

    def _raw(self) -> dict:
        if not isinstance(self.request.data, dict):
            raise exceptions.ValidationError("The body is a JSON object of the endpoint's settings.")
        return self.request.data

    def create(self, request, *args, **kwargs):
        body = self._raw()
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise endpoints.EndpointError("'model' is required: a base model id or an ft: model id.", param="model")
        if "name" not in body:
            body = {**body, "name": model}
        endpoint = endpoints.create(
            organization_id=self.organization.pk,
            model=model,
            settings={k: body[k] for k in SETTINGS if k in body},
            actor=self.actor,
            created_by_id=getattr(request.user, "pk", None),
        )
        return Response(EndpointSerializer(self._fresh(endpoint.pk)).data, status=201)

    def update(self, request, *args, **kwargs):
        endpoint = self.get_object()
        body = self._raw()
        changes = {k: body[k] for k in [*SETTINGS, "model"] if k in body}
        endpoints.update(endpoint.pk, organization_id=self.organization.pk, changes=changes, actor=self.actor)
        return Response(EndpointSerializer(self._fresh(endpoint.pk)).data)

    def destroy(self, request, *args, **kwargs):
        endpoint = self.get_object()
        endpoints.delete(endpoint.pk, organization_id=self.organization.pk, actor=self.actor)
        return Response(status=204)

    @extend_schema(request=None, responses=EndpointSerializer, summary="Stop an endpoint (calls get 404)")
    @action(detail=True, methods=["post"])
    def stop(self, request, org, pk=None):
        endpoint = self.get_object()
        endpoints.stop(endpoint.pk, organization_id=self.organization.pk, actor=self.actor)
        return Response(EndpointSerializer(self._fresh(endpoint.pk)).data)

    @extend_schema(request=None, responses=EndpointSerializer, summary="Start a stopped or failed endpoint")
    @action(detail=True, methods=["post"])
    def start(self, request, org, pk=None):
        endpoint = self.get_object()
        endpoints.start(endpoint.pk, organization_id=self.organization.pk, actor=self.actor)
        return Response(EndpointSerializer(self._fresh(endpoint.pk)).data)

    @extend_schema(
        request=None, responses=OpenApiTypes.OBJECT, summary="Requests, tokens, latency and errors, last hour and day"
    )
    @action(detail=True, methods=["get"])
    def metrics(self, request, org, pk=None):
        endpoint = self.get_object()
        organization_id = self.organization.pk
        return Response(
            {
                "endpoint": endpoint.pk,
                **endpoint_metrics.metrics(organization_id, endpoint.pk),
                "last_hour_per_minute": endpoint_metrics.series(organization_id, endpoint.pk),
            }
        )

    def _fresh(self, endpoint_id: str) -> Endpoint:
        return Endpoint.all_orgs.prefetch_related(selectors.PLACEMENTS).get(pk=endpoint_id)
