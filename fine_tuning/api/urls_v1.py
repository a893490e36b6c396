from django.urls import path

from fine_tuning.api import files_v1

urlpatterns = [
    path("files", files_v1.FilesView.as_view(), name="files"),
    path("files/<str:file_id>", files_v1.FileDetailView.as_view(), name="file"),
    path("files/<str:file_id>/content", files_v1.FileContentView.as_view(), name="file-content"),
]
