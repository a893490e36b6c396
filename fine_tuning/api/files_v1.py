"""/v1/files — OpenAI-compatible: create (multipart), list, retrieve, delete, content."""

from __future__ import annotations

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse
from rest_framework import exceptions, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from fine_tuning import services
from fine_tuning.models import File
from fine_tuning.uploads import HashingUploadHandler
from tenancy.api.pagination import CursorPagination
from tenancy.api.scoping import KeyScopedMixin
from tenancy.roles import Scope


def file_object(row: File) -> dict:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at.timestamp()),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "status_details": row.status_details,
        "expires_at": None,
    }


class TooLarge(exceptions.APIException):
    status_code = 413
    default_code = "file_too_large"


def _limit_text() -> str:
    limit = settings.FILE_UPLOAD_MAX_BYTES
    return f"{limit // (1 << 20)} MB" if limit >= 1 << 20 else f"{limit} bytes"


class FilesView(KeyScopedMixin, APIView):
    model = File
    required_scope = Scope.FILES
    parser_classes = [MultiPartParser]

    def get(self, request):
        rows = self.get_queryset().filter(deleted_at=None)
        purpose = request.query_params.get("purpose")
        if purpose:
            rows = rows.filter(purpose=purpose)
        paginator = CursorPagination()
        page = paginator.paginate_queryset(rows, request, self)
        return paginator.get_paginated_response([file_object(row) for row in page])

    def post(self, request):
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
        if declared > settings.FILE_UPLOAD_MAX_BYTES + (1 << 16):  # the multipart framing is small
            raise TooLarge(f"The file is too large: the limit is {_limit_text()}.")
        handler = HashingUploadHandler(request._request, settings.FILE_UPLOAD_MAX_BYTES)
        request._request.upload_handlers = [handler]
        uploaded = request.data.get("file") if hasattr(request.data, "get") else None
        if handler.too_large:
            raise TooLarge(f"The file is too large: the limit is {_limit_text()}.")
        if uploaded is None or not hasattr(uploaded, "sha256"):
            raise exceptions.ValidationError({"file": ["Upload the file as the multipart field 'file'."]})
        purpose = request.data.get("purpose")
        if not purpose:
            raise exceptions.ValidationError({"purpose": ["'purpose' is required (use 'fine-tune' or 'batch')."]})
        row = services.upload_file(
            organization_id=self.principal.organization_id, uploaded=uploaded, purpose=purpose, actor=self.actor
        )
        return Response(file_object(row), status=status.HTTP_200_OK)


class FileDetailView(KeyScopedMixin, APIView):
    model = File
    required_scope = Scope.FILES

    def _row(self, file_id: str) -> File:
        row = self.get_queryset().filter(pk=file_id, deleted_at=None).first()
        if row is None:
            raise exceptions.NotFound(f"No such File object: {file_id}")
        return row

    def get(self, request, file_id: str):
        return Response(file_object(self._row(file_id)))

    def delete(self, request, file_id: str):
        row = self._row(file_id)
        services.delete_file(row.pk, organization_id=self.principal.organization_id, actor=self.actor)
        return Response({"id": row.pk, "object": "file", "deleted": True})


class FileContentView(FileDetailView):
    http_method_names = ["get", "head", "options"]  # not the detail's DELETE: 405 and an Allow that says so

    def perform_content_negotiation(self, request, force=False):
        # The content is the file's bytes whatever the client accepts (the openai SDK asks for
        # application/binary); errors are rendered as JSON.
        return super().perform_content_negotiation(request, force=True)

    def get(self, request, file_id: str):
        row = self._row(file_id)
        try:
            stream = default_storage.open(row.storage_key, "rb")
        except FileNotFoundError:
            raise exceptions.NotFound(f"The content of {file_id} is no longer stored.") from None
        return FileResponse(
            stream,
            content_type="application/octet-stream",
            as_attachment=True,
            filename=row.filename,
        )
