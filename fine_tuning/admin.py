from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from fine_tuning import jobs
from fine_tuning.models import Dataset, DatasetVersion, File, FineTuningJob, JobEvent
from tenancy.audit import Actor
from tenancy.services import ServiceError


@admin.register(File)
class FileAdmin(admin.ModelAdmin):
    list_display = ["id", "organization", "filename", "purpose", "bytes", "status", "created_at", "deleted_at"]
    list_filter = ["status", "purpose"]
    search_fields = ["id", "filename", "organization__slug", "sha256"]
    readonly_fields = [f.name for f in File._meta.fields if f.name != "report"] + ["validation_report"]
    list_select_related = ["organization"]

    @admin.display(description="validation report")
    def validation_report(self, row: File) -> str:
        """The report as people read it: the counts, then each problem with its line."""
        report = row.report or {}
        counts = format_html(
            "<p>{} examples ({}), {} lines, {} tokens, {} problems</p>",
            report.get("examples", 0),
            report.get("format") or "format unknown",
            report.get("lines", 0),
            report.get("total_tokens", 0),
            report.get("error_count", 0),
        )
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            ((e.get("line") or "—", e.get("message", ""), e.get("code", "")) for e in report.get("errors", [])),
        )
        if not rows:
            return counts
        return format_html("{}<table><tr><th>Line</th><th>Problem</th><th>Code</th></tr>{}</table>", counts, rows)

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


class JobEventInline(admin.TabularInline):
    """A job's events as people read them, newest first, on the job's page."""

    model = JobEvent
    fields = ["created_at", "level", "message"]
    readonly_fields = fields
    ordering = ["-created_at"]
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False


@admin.register(FineTuningJob)
class FineTuningJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "organization",
        "base_model",
        "status",
        "queue_position",
        "progress_percent",
        "attempts",
        "lease_owner",
        "created_at",
        "finished_at",
        "effective_training_time",
    ]
    list_filter = ["status", "base_model"]
    search_fields = ["id", "organization__slug", "fine_tuned_model"]
    readonly_fields = [f.name for f in FineTuningJob._meta.fields]
    list_select_related = ["organization", "base_model"]
    actions = ["cancel", "requeue"]
    inlines = [JobEventInline]

    def has_add_permission(self, request):
        return False

    def get_changelist_instance(self, request):
        # The claim order is worked out once for the page, not once per row.
        changelist = super().get_changelist_instance(request)
        rows = list(changelist.result_list)  # evaluated here; the page renders these same objects
        positions = jobs.queue_positions(rows)
        for job in rows:
            job.queue_place = positions.get(job.pk)
        return changelist

    @admin.display(description="queue position")
    def queue_position(self, job):
        return job.queue_place if hasattr(job, "queue_place") else jobs.queue_position(job)

    @admin.display(description="progress")
    def progress_percent(self, job):
        return f"{job.progress * 100:.0f} %"

    @admin.action(description="Cancel selected jobs")
    def cancel(self, request, queryset):
        self._each(
            request,
            queryset,
            lambda job, actor: jobs.cancel(job.pk, organization_id=job.organization_id, actor=actor),
            "cancelled",
        )

    @admin.action(description="Requeue selected jobs (they resume from their last checkpoint)")
    def requeue(self, request, queryset):
        self._each(request, queryset, lambda job, actor: jobs.requeue(job.pk, actor=actor), "requeued")

    def _each(self, request, queryset, act, verb: str) -> None:
        done, refused = 0, []
        for job in queryset:
            try:
                act(job, Actor.from_request(request))
                done += 1
            except ServiceError as exc:
                refused.append(f"{job.pk}: {exc.message}")
        self.message_user(request, f"{done} job(s) {verb}.", messages.SUCCESS)
        for line in refused:
            self.message_user(request, line, messages.WARNING)


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "job", "level", "type", "message"]
    list_filter = ["level", "type"]
    search_fields = ["job__id", "message"]
    readonly_fields = [f.name for f in JobEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
