from django.contrib import admin

from catalog.models import BaseModel


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin):
    list_display = ["id", "display_name", "family", "context_length", "fine_tunable", "status", "visibility"]
    list_filter = ["status", "visibility", "fine_tunable", "family"]
    search_fields = ["id", "display_name", "family"]
    filter_horizontal = ["allowed_organizations"]
    readonly_fields = ["created_at", "updated_at"]
