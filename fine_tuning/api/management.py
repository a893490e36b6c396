"""Management API: files (with their validation reports) and datasets with versions."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from fine_tuning import services
from fine_tuning.models import Dataset, DatasetVersion, File
from tenancy.api.scoping import ORG_PARAMETER, OrgScopedViewSet
from tenancy.api.serializers import StrictCharField, name_field
from tenancy.roles import Permission as P

org_param = extend_schema(parameters=[ORG_PARAMETER])


class FileSerializer(serializers.ModelSerializer):
    class Meta:
        model = File
        fields = [
            "id",
            "purpose",
            "filename",
            "bytes",
            "sha256",
            "status",
            "status_details",
            "format",
            "report",
            "created_at",
            "validated_at",
        ]
        read_only_fields = fields


class DatasetSerializer(serializers.ModelSerializer):
    name = name_field(max_length=100)
    description = StrictCharField(required=False, allow_blank=True, max_length=10_000)

    class Meta:
        model = Dataset
        fields = ["id", "name", "description", "created_at"]
        read_only_fields = ["id", "created_at"]


class DatasetVersionSerializer(serializers.ModelSerializer):
    file = serializers.CharField(source="file_id", read_only=True)

    class Meta:
        model = DatasetVersion
        fields = ["id", "number", "file", "note", "created_at"]
        read_only_fields = ["id", "number", "file", "created_at"]


class NewVersionSerializer(serializers.Serializer):
    file_id = StrictCharField(max_length=40)
    note = StrictCharField(max_length=500, required=False, allow_blank=True, default="")


@org_param
class FileViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    model = File
    serializer_class = FileSerializer
    permissions = {"list": P.JOBS_VIEW, "retrieve": P.JOBS_VIEW, "destroy": P.JOBS_MANAGE}

    def get_queryset(self):
        return super().get_queryset().filter(deleted_at=None)

    def destroy(self, request, org, pk):
        row = self.get_object()
        services.delete_file(row.pk, organization_id=self.organization.pk, actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)


@org_param
class DatasetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    model = Dataset
    serializer_class = DatasetSerializer
    permissions = {"list": P.JOBS_VIEW, "retrieve": P.JOBS_VIEW, "create": P.JOBS_MANAGE}

    @extend_schema(request=DatasetSerializer, responses={201: DatasetSerializer})
    def create(self, request, org):
        body = DatasetSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        dataset = services.create_dataset(organization_id=self.organization.pk, actor=self.actor, **body.validated_data)
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


@extend_schema(parameters=[ORG_PARAMETER])
class DatasetVersionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    model = DatasetVersion
    serializer_class = DatasetVersionSerializer
    permissions = {"list": P.JOBS_VIEW, "retrieve": P.JOBS_VIEW, "create": P.JOBS_MANAGE}

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # resolves the organization and enters its scope
        if not Dataset.objects.filter(pk=kwargs["dataset_id"]).exists():
            raise NotFound("No such dataset.")

    def get_queryset(self):
        return super().get_queryset().filter(dataset_id=self.kwargs["dataset_id"])

    @extend_schema(request=NewVersionSerializer, responses={201: DatasetVersionSerializer})
    def create(self, request, org, dataset_id):
        body = NewVersionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        version = services.add_dataset_version(
            dataset_id, organization_id=self.organization.pk, actor=self.actor, **body.validated_data
        )
        return Response(DatasetVersionSerializer(version).data, status=status.HTTP_201_CREATED)
