from django.contrib import admin

from catalog.models import BaseModel, FineTunedModel


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "display_name",
        "kind",
        "family",
        "context_length",
        "fine_tunable",
        "status",
        "visibility",
        "serving_engine",
        "min_replicas",
        "max_replicas",
    ]
    list_filter = ["kind", "status", "visibility", "fine_tunable", "family"]
    search_fields = ["id", "display_name", "family"]
    filter_horizontal = ["allowed_organizations"]
    readonly_fields = ["created_at", "updated_at"]


@admin.register(FineTunedModel)
class FineTunedModelAdmin(admin.ModelAdmin):
    list_display = ["id", "organization", "base_model", "job_id", "created_at", "deleted_at"]
    search_fields = ["id", "organization__slug", "job_id"]
    readonly_fields = [f.name for f in FineTunedModel._meta.fields]
    list_select_related = ["organization"]

    def has_add_permission(self, request):
        return False
