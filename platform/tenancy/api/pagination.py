"""Cursor lists in the OpenAI shape: `{"object": "list", "data", "has_more", "first_id", "last_id"}`,
next page with `?after=<last id>&limit=N`. Stable under inserts: the cursor is a row, not an offset."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q
from rest_framework import exceptions
from rest_framework.pagination import BasePagination
from rest_framework.response import Response


class CursorPagination(BasePagination):
    default_limit = 20
    max_limit = 100

    def paginate_queryset(self, queryset, request, view=None):
        order_field = getattr(view, "cursor_field", "created_at")
        try:
            limit = int(request.query_params.get("limit", self.default_limit))
        except ValueError:
            raise exceptions.ValidationError({"limit": ["Must be an integer."]}) from None
        if not 1 <= limit <= self.max_limit:
            raise exceptions.ValidationError({"limit": [f"Must be between 1 and {self.max_limit}."]})
        queryset = queryset.order_by(f"-{order_field}", "-pk")
        after = request.query_params.get("after")
        if after:
            try:
                anchor = queryset.filter(pk=after).values(order_field, "pk").first()
            except (DjangoValidationError, ValueError):
                anchor = None
            if anchor is None:
                # Named an object this list does not hold (another organization's included): a 404, as any
                # reference to what is not there.
                raise exceptions.NotFound(f"after: No item with id {after!r} in this list.")
            value = anchor[order_field]
            queryset = queryset.filter(
                Q(**{f"{order_field}__lt": value}) | Q(**{order_field: value, "pk__lt": anchor["pk"]})
            )
        rows = list(queryset[: limit + 1])
        self.has_more = len(rows) > limit
        return rows[:limit]

    def get_paginated_response(self, data):
        data = list(data)
        return Response(
            {
                "object": "list",
                "data": data,
                "has_more": self.has_more,
                "first_id": str(data[0]["id"]) if data else None,
                "last_id": str(data[-1]["id"]) if data else None,
            }
        )

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["object", "data", "has_more"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": schema,
                "has_more": {"type": "boolean"},
                "first_id": {"type": "string", "nullable": True},
                "last_id": {"type": "string", "nullable": True},
            },
        }

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": "after",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "Return items after the item with this id.",
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_limit, "default": self.default_limit},
            },
        ]
