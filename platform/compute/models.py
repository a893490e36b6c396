from django.db import models
from django.utils import timezone


class Node(models.Model):
    """A host in the pool and its accelerators, all of one kind ("cpu" on a machine without one).
    The workers and runtimes on it keep it alive by heartbeating; a node that stops is reaped and
    its allocations end. Platform infrastructure, not owned by a tenant."""

    name = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=200)
    accelerator = models.CharField(max_length=200, help_text='e.g. "NVIDIA H100 80GB HBM3", or "cpu".')
    accelerator_count = models.PositiveSmallIntegerField(default=1)
    accelerator_memory_bytes = models.BigIntegerField(default=0, help_text="Memory of each accelerator.")
    schedulable = models.BooleanField(default=True, help_text="Off: nothing new is placed here (draining).")
    address = models.CharField(
        max_length=200, default="127.0.0.1", help_text="Where its engines listen, as the gateway reaches them."
    )
    agent_seen_at = models.DateTimeField(
        null=True, blank=True, help_text="Its node agent's last heartbeat: replicas are placed only where one runs."
    )
    cached_models = models.JSONField(
        default=list, blank=True, help_text="Base models whose weights are in its cache (placement prefers it)."
    )
    cores = models.PositiveSmallIntegerField(default=0, help_text="CPU cores (a CPU accelerator is a share of them).")
    registered_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Accelerator(models.Model):
    """One device of a node, by its index on the node (the CUDA device number)."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="accelerators")
    index = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=200)
    memory_bytes = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["node", "index"]
        constraints = [models.UniqueConstraint(fields=["node", "index"], name="one_accelerator_per_index")]

    def __str__(self) -> str:
        return f"{self.node.name}/{self.index}"


class Allocation(models.Model):
    """Accelerators of one node held by a training job or an endpoint replica, for an organization
    (none: the platform's own). Serving allocations may be pending (waiting for training to leave);
    training allocations are active from their claim. An ended allocation is the pool's history:
    utilisation and fair share are computed from these rows."""

    class Kind(models.TextChoices):
        TRAINING = "training", "Training job"
        SERVING = "serving", "Endpoint replica"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        ACTIVE = "active", "Active"
        ENDED = "ended", "Ended"

    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="allocations")
    organization = models.ForeignKey(
        "tenancy.Organization", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    holder = models.CharField(max_length=200, help_text="The job id, or the endpoint id and its replica.")
    devices = models.JSONField(default=list, help_text="Indices of the node's accelerators held.")
    accelerators = models.PositiveSmallIntegerField(default=0, editable=False, help_text="How many devices.")
    memory_bytes = models.BigIntegerField(default=0, help_text="Estimated memory needed on each accelerator.")
    lent = models.BooleanField(default=False, help_text="Training on accelerators an idle endpoint lends.")
    idle_since = models.DateTimeField(
        null=True, blank=True, help_text="Serving: no calls since then; lendable after COMPUTE_LEND_IDLE_SECONDS."
    )
    notify = models.CharField(max_length=200, blank=True, help_text="Celery task sent the holder once active.")
    launch = models.JSONField(
        default=dict,
        blank=True,
        help_text='What its node\'s agent runs for it, {"argv": [...], "env": {...}}: the processes of a job '
        "across nodes on the nodes that do not lead it.",
    )
    preempt_requested_at = models.DateTimeField(null=True, blank=True)
    preempt_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["state", "node"], name="allocation_live"),
            models.Index(fields=["organization", "ended_at"], name="allocation_usage"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["holder"], condition=~models.Q(state="ended"), name="one_live_allocation_per_holder"
            )
        ]

    def __str__(self) -> str:
        return f"{self.holder} on {self.node_id} {self.devices}"

    def save(self, *args, **kwargs):
        self.accelerators = len(self.devices)  # kept beside the indices so history sums in SQL
        super().save(*args, **kwargs)


class OrganizationCompute(models.Model):
    """An organization's place in the pool, set in the back office: its priority class, its fair
    share weight, and a quota of accelerators it may hold at once (training and serving)."""

    class Priority(models.IntegerChoices):
        LOW = -1, "Low"
        NORMAL = 0, "Normal"
        HIGH = 1, "High"

    organization = models.OneToOneField("tenancy.Organization", on_delete=models.CASCADE, related_name="+")
    priority = models.SmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    share = models.PositiveIntegerField(
        default=1, help_text="Fair-share weight: 2 gets twice the accelerator time of 1."
    )
    max_accelerators = models.PositiveIntegerField(
        null=True, blank=True, help_text="Accelerators it may hold at once; empty: no limit."
    )

    class Meta:
        verbose_name = "organization compute settings"
        verbose_name_plural = "organization compute settings"

    def __str__(self) -> str:
        return f"compute settings of {self.organization_id}"


class Worker(models.Model):
    """A Celery worker process that registered itself: where it runs, on what accelerator, which
    queues it takes, and what it is doing. Platform infrastructure, not owned by a tenant."""

    name = models.CharField(max_length=200, unique=True)
    node = models.ForeignKey(Node, null=True, blank=True, on_delete=models.SET_NULL, related_name="workers")
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list)
    accelerator = models.CharField(max_length=200, help_text='e.g. "NVIDIA H100 80GB HBM3", or "cpu".')
    accelerator_memory_bytes = models.BigIntegerField(default=0)
    current_job_id = models.CharField(max_length=40, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
