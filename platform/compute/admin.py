from django.contrib import admin
from django.utils import timezone

from compute import allocations, selectors
from compute.models import Accelerator, Allocation, Node, OrganizationCompute, Worker


class AcceleratorInline(admin.TabularInline):
    model = Accelerator
    extra = 0
    can_delete = False
    readonly_fields = ["index", "name", "memory_bytes"]


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    """The pool: each node's accelerators, what holds them, and whether it is up."""

    list_display = ["name", "accelerator", "accelerator_count", "memory_gib", "in_use", "up", "schedulable"]
    list_editable = ["schedulable"]
    inlines = [AcceleratorInline]
    readonly_fields = [f.name for f in Node._meta.fields if f.name != "schedulable"]

    @admin.display(description="memory per accelerator (GiB)")
    def memory_gib(self, node: Node) -> str:
        return f"{node.accelerator_memory_bytes / 2**30:.1f}"

    @admin.display(description="accelerators held")
    def in_use(self, node: Node) -> int:
        return len({d for a in allocations.live(node) for d in a.devices})

    @admin.display(boolean=True, description="heartbeating")
    def up(self, node: Node) -> bool:
        return allocations.is_live(node, timezone.now())

    def has_add_permission(self, request):
        return False


@admin.register(Allocation)
class AllocationAdmin(admin.ModelAdmin):
    list_display = ["holder", "kind", "state", "organization", "node", "devices", "lent", "started_at", "ended_at"]
    list_filter = ["state", "kind", "lent", "node"]
    search_fields = ["holder"]
    readonly_fields = [f.name for f in Allocation._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(OrganizationCompute)
class OrganizationComputeAdmin(admin.ModelAdmin):
    """Each organization's priority class, fair-share weight and accelerator quota."""

    list_display = ["organization", "priority", "share", "max_accelerators"]
    list_editable = ["priority", "share", "max_accelerators"]
    autocomplete_fields = ["organization"]


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "state",
        "node",
        "accelerator",
        "memory_gib",
        "queues",
        "current_job_id",
        "last_heartbeat_at",
    ]
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
