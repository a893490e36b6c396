from django.contrib import admin

from billing.models import UsageEvent


@admin.register(UsageEvent)
class UsageEventAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "organization",
        "model",
        "endpoint",
        "prompt_tokens",
        "completion_tokens",
        "outcome",
        "status_code",
        "latency_ms",
        "streamed",
    ]
    list_filter = ["outcome", "endpoint", "streamed"]
    search_fields = ["request_id", "model", "organization__slug"]
    list_select_related = ["organization"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # append-only
