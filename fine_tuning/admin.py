from django.contrib import admin

from fine_tuning.models import Dataset, DatasetVersion, File


@admin.register(File)
class FileAdmin(admin.ModelAdmin):
    list_display = ["id", "organization", "filename", "purpose", "bytes", "status", "created_at", "deleted_at"]
    list_filter = ["status", "purpose"]
    search_fields = ["id", "filename", "organization__slug", "sha256"]
    readonly_fields = [f.name for f in File._meta.fields]
    list_select_related = ["organization"]

    def has_add_permission(self, request):
        return False


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["id", "organization", "name", "created_at"]
    search_fields = ["id", "name", "organization__slug"]
    list_select_related = ["organization"]


@admin.register(DatasetVersion)
class DatasetVersionAdmin(admin.ModelAdmin):
    list_display = ["id", "dataset", "number", "file", "created_at"]
    list_select_related = ["dataset"]
    readonly_fields = ["organization", "dataset", "number", "file", "created_at"]

    def has_add_permission(self, request):
        return False
