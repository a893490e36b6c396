from django.urls import path

from fine_tuning.api import files_v1, jobs_v1

urlpatterns = [
    path("files", files_v1.FilesView.as_view(), name="files"),
    path("files/<str:file_id>", files_v1.FileDetailView.as_view(), name="file"),
    path("files/<str:file_id>/content", files_v1.FileContentView.as_view(), name="file-content"),
    path("fine_tuning/jobs", jobs_v1.JobsView.as_view(), name="jobs"),
    path("fine_tuning/jobs/<str:job_id>", jobs_v1.JobView.as_view(), name="job"),
    path(
        "fine_tuning/jobs/<str:job_id>/cancel", jobs_v1.JobActionView.as_view(action_name="cancel"), name="job-cancel"
    ),
    path("fine_tuning/jobs/<str:job_id>/pause", jobs_v1.JobActionView.as_view(action_name="pause"), name="job-pause"),
    path(
        "fine_tuning/jobs/<str:job_id>/resume", jobs_v1.JobActionView.as_view(action_name="resume"), name="job-resume"
    ),
    path("fine_tuning/jobs/<str:job_id>/events", jobs_v1.JobEventsView.as_view(), name="job-events"),
    path("fine_tuning/jobs/<str:job_id>/checkpoints", jobs_v1.JobCheckpointsView.as_view(), name="job-checkpoints"),
]
