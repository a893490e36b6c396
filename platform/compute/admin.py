from django.contrib import admin

from compute import selectors
from compute.models import Worker


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ["name", "state", "accelerator", "memory_gib", "queues", "current_job_id", "last_heartbeat_at"]
    search_fields = ["name", "hostname", "current_job_id"]
    readonly_fields = [f.name for f in Worker._meta.fields]

    @admin.display(description="state")
    def state(self, worker: Worker) -> str:
        return selectors.state(worker)

    @admin.display(description="memory (GiB)")
    def memory_gib(self, worker: Worker) -> str:
        return f"{worker.accelerator_memory_bytes / 2**30:.1f}"

    def has_add_permission(self, request):
        return False
