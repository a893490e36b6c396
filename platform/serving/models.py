from django.conf import settings
from django.db import models
from django.utils import timezone

from tenancy.managers import TenantModel


class ReplicaState(models.TextChoices):
    REGISTERED = "registered", "Registered by hand"
    STARTING = "starting", "Starting"  # placed; its node agent starts the engine and probes it
    READY = "ready", "Ready"  # probed with a real generation: the gateway routes to it
    DRAINING = "draining", "Draining"  # no new requests; the agent stops it once they finished
    ENDED = "ended", "Ended"
    FAILED = "failed", "Failed"


class Deployment(models.Model):
    """What the pool runs of one model: the shared (per-token) serving of a catalog base model, or
    a dedicated endpoint's own replicas. serving.deployments owns it; the scaler sets `desired`
    between its bounds from measured load."""

    key = models.CharField(max_length=200, unique=True, help_text='"model:<base model>" or the endpoint id.')
    base_model = models.ForeignKey("catalog.BaseModel", on_delete=models.CASCADE, related_name="+")
    endpoint = models.OneToOneField(
        "serving.Endpoint", null=True, blank=True, on_delete=models.CASCADE, related_name="deployment"
    )
    organization = models.ForeignKey(
        "tenancy.Organization", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    engine = models.CharField(max_length=16, default="builtin")
    dtype = models.CharField(max_length=16, default="float32")
    min_replicas = models.PositiveSmallIntegerField(default=0)
    max_replicas = models.PositiveSmallIntegerField(default=1)
    target_concurrency = models.PositiveSmallIntegerField(default=4)
    idle_seconds = models.PositiveIntegerField(default=300)
    desired = models.PositiveSmallIntegerField(default=0)
    adapters = models.JSONField(
        default=list, blank=True, help_text='Adapters its engines load at start: [{"name": ..., "path": ...}].'
    )
    busy_since = models.DateTimeField(null=True, blank=True, help_text="Load above target since then.")
    active_at = models.DateTimeField(null=True, blank=True, help_text="Last seen with a request (or asked for one).")
    observed = models.JSONField(default=dict, blank=True, help_text="The scaler's last reading per replica.")
    waiting_reason = models.CharField(max_length=500, blank=True, help_text="Why a wanted replica is not placed.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key

    @property
    def dedicated(self) -> bool:
        return self.endpoint_id is not None


class DeploymentEvent(models.Model):
    """A scaling decision or a replica's start, failure or stop, with the numbers behind it."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    organization = models.ForeignKey(
        "tenancy.Organization", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    kind = models.CharField(max_length=32)
    message = models.CharField(max_length=500)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.deployment_id} {self.kind}: {self.message}"


class Backend(models.Model):
    """A model server replica the gateway can route to: our runtime, a vLLM server, or any
    OpenAI-compatible server. Platform infrastructure, not owned by a tenant."""

    class Engine(models.TextChoices):
        BUILTIN = "builtin", "MaaS runtime"
        VLLM = "vllm", "vLLM"
        OPENAI = "openai", "Other OpenAI-compatible server"

    name = models.SlugField(max_length=100, unique=True)
    url = models.URLField(help_text="Base URL on the private network, e.g. http://10.0.0.5:8100")
    engine = models.CharField(max_length=16, choices=Engine.choices, default=Engine.BUILTIN)
    base_model = models.ForeignKey("catalog.BaseModel", on_delete=models.CASCADE, related_name="+")
    served_model_name = models.CharField(
        max_length=200, blank=True, help_text="The name the server knows the base model by (default: its id)."
    )
    api_key = models.CharField(max_length=200, blank=True, help_text="Shared secret the server requires.")
    node = models.ForeignKey(
        "compute.Node",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The pool node it runs on: dedicated endpoints' replicas here hold its accelerators. Empty: "
        "outside the pool (an external server).",
    )
    enabled = models.BooleanField(default=True)
    healthy = models.BooleanField(default=False)
    # A replica the platform runs (empty deployment: registered by hand) and where its engine is.
    deployment = models.ForeignKey(
        "serving.Deployment", null=True, blank=True, on_delete=models.CASCADE, related_name="replicas"
    )
    allocation = models.ForeignKey(
        "compute.Allocation", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    state = models.CharField(max_length=16, choices=ReplicaState.choices, default=ReplicaState.REGISTERED)
    state_reason = models.CharField(max_length=500, blank=True, help_text="Why it failed, in words a tenant may read.")
    pid = models.PositiveIntegerField(null=True, blank=True)
    crashes = models.JSONField(default=list, blank=True, help_text="When its engine exited unasked (ISO times).")
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def upstream_model(self) -> str:
        return self.served_model_name or self.base_model_id


class Endpoint(TenantModel):
    """A model (base or ft:) an organization publishes under its own id `ep-…`, with its own
    defaults, limits, access list, billing mode and replicas. Its status changes only in
    serving.endpoints, under a row lock, with an audit row. Deleting keeps the row (deleted_at), so
    its usage history keeps a name."""

    class Status(models.TextChoices):
        CREATING = "creating", "Creating"
        DEPLOYING = "deploying", "Deploying"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        STOPPED = "stopped", "Stopped"

    class Billing(models.TextChoices):
        PER_TOKEN = "per_token", "Per token, at the model's price"
        DEDICATED = "dedicated", "Dedicated: per replica-minute"

    id = models.CharField(primary_key=True, max_length=40)
    name = models.CharField(max_length=100)
    model = models.CharField(max_length=200, help_text="The catalog model served: a base model or an ft: model.")
    base_model = models.ForeignKey("catalog.BaseModel", on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CREATING)
    status_reason = models.CharField(max_length=500, blank=True)
    defaults = models.JSONField(
        default=dict, blank=True, help_text="Generation parameters used when the caller sets none."
    )
    system_prompt = models.TextField(blank=True)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    max_tokens_cap = models.PositiveIntegerField(null=True, blank=True)
    allowed_key_ids = models.JSONField(default=list, blank=True, help_text="Empty: every key of the organization.")
    billing_mode = models.CharField(max_length=16, choices=Billing.choices, default=Billing.PER_TOKEN)
    replicas = models.PositiveSmallIntegerField(default=1)
    metered_until = models.DateTimeField(
        null=True, blank=True, help_text="Dedicated billing: replica-minutes before this moment are in the ledger."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"], condition=models.Q(deleted_at=None), name="one_live_endpoint_name"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


class EndpointReplica(TenantModel):
    """A replica chosen to serve an endpoint, and what its last probe said: a replica that failed
    its probe is out of the endpoint's route until it passes again."""

    class State(models.TextChoices):
        LOADING = "loading", "Loading"
        SERVING = "serving", "Serving"
        FAILED = "failed", "Failed"

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="placements")
    backend = models.ForeignKey(Backend, on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.LOADING)
    last_error = models.CharField(max_length=500, blank=True)
    probed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["endpoint", "backend"], name="one_placement_per_replica")]

    def __str__(self) -> str:
        return f"{self.endpoint_id} on {self.backend_id} ({self.state})"
