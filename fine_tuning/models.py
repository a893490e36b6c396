import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenancy.managers import TenantModel


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def new_dataset_id() -> str:
    return f"ds-{secrets.token_hex(8)}"


def new_dataset_version_id() -> str:
    return f"dsv-{secrets.token_hex(8)}"


class File(TenantModel):
    """An uploaded file (OpenAI's FileObject). Training data and batch requests are validated line
    by line at upload."""

    class Purpose(models.TextChoices):
        FINE_TUNE = "fine-tune", "Fine-tuning data"
        BATCH = "batch", "Batch API requests"
        BATCH_OUTPUT = "batch_output", "Batch API results"  # written by the platform, never uploaded

    class Status(models.TextChoices):
        UPLOADED = "uploaded", "Uploaded, validation pending"
        PROCESSED = "processed", "Validated"
        ERROR = "error", "Invalid"

    class Format(models.TextChoices):
        CHAT = "chat", "Chat (messages)"
        COMPLETION = "completion", "Prompt / completion"

    id = models.CharField(primary_key=True, max_length=40, default=new_file_id, editable=False)
    purpose = models.CharField(max_length=32, choices=Purpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    storage_key = models.CharField(max_length=300, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UPLOADED)
    status_details = models.TextField(null=True, blank=True)
    format = models.CharField(max_length=16, choices=Format.choices, blank=True)
    report = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_key = models.ForeignKey(
        "tenancy.APIKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    validated_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"], name="file_org_created")]

    def __str__(self) -> str:
        return f"{self.id} ({self.filename})"


class Dataset(TenantModel):
    """A named collection of validated file versions; a job records which version it trained on."""

    id = models.CharField(primary_key=True, max_length=40, default=new_dataset_id, editable=False)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="dataset_name_per_org")]

    def __str__(self) -> str:
        return self.name


class DatasetVersion(TenantModel):
    id = models.CharField(primary_key=True, max_length=40, default=new_dataset_version_id, editable=False)
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    file = models.ForeignKey(File, on_delete=models.PROTECT, related_name="dataset_versions")
    note = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["dataset", "number"], name="one_number_per_version")]


def new_job_id() -> str:
    return f"ftjob-{secrets.token_hex(12)}"


def new_event_id() -> str:
    return f"ftevent-{secrets.token_hex(12)}"


def new_checkpoint_id() -> str:
    return f"ftckpt-{secrets.token_hex(12)}"

    def __str__(self) -> str:
        return f"{self.dataset_id} v{self.number}"


class FineTuningJob(TenantModel):
    """A LoRA fine-tune. The row is the truth about the job: its status changes only in
    fine_tuning.jobs under a row lock, and a lease with a heartbeat says which worker runs it."""

    class Status(models.TextChoices):
        VALIDATING_FILES = "validating_files", "Validating files"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.VALIDATING_FILES, Status.QUEUED, Status.RUNNING)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.CharField(primary_key=True, max_length=40, default=new_job_id, editable=False)
    base_model = models.ForeignKey("catalog.BaseModel", on_delete=models.PROTECT, related_name="+")
    training_file = models.ForeignKey(File, on_delete=models.PROTECT, related_name="+")
    validation_file = models.ForeignKey(File, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    dataset_version = models.ForeignKey(
        DatasetVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.VALIDATING_FILES)
    hyperparameters = models.JSONField(default=dict)
    method = models.JSONField(default=dict)
    suffix = models.CharField(max_length=64, blank=True)
    seed = models.BigIntegerField()
    metadata = models.JSONField(null=True, blank=True)
    fine_tuned_model = models.CharField(max_length=200, null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    estimated_tokens = models.BigIntegerField(default=0)
    trained_tokens = models.BigIntegerField(null=True, blank=True)
    progress = models.FloatField(default=0.0)
    evaluation = models.JSONField(
        null=True,
        blank=True,
        help_text="Validation before and after: {validation: {source, examples}, base: {...}, fine_tuned: {...}}",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_key = models.ForeignKey(
        "tenancy.APIKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True, help_text="When a worker was last woken for it.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    estimated_finish = models.DateTimeField(null=True, blank=True)
    # Execution: who runs it, until when, how often it was (re)started, what was productive.
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    train_seconds = models.FloatField(default=0.0)
    stop_requested = models.CharField(max_length=16, blank=True, help_text="cancel | pause, when asked while running")
    # Placement in the pool (compute): what it needs, why it waits, how often endpoints took its place.
    accelerators = models.PositiveSmallIntegerField(default=1, help_text="Data-parallel over this many, on one node.")
    memory_bytes = models.BigIntegerField(default=0, help_text="Estimated memory needed on each accelerator.")
    peak_memory_bytes = models.BigIntegerField(
        null=True, blank=True, help_text="Measured: the most memory the run held on an accelerator."
    )
    wait_reason = models.CharField(max_length=500, blank=True)
    preemptions = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "queued_at"], name="ftjob_queue")]

    @property
    def effective_training_time(self) -> float | None:
        """Productive training seconds / wall seconds from first start to the end."""
        if not (self.started_at and self.finished_at):
            return None
        wall = (self.finished_at - self.started_at).total_seconds()
        return round(min(1.0, self.train_seconds / wall), 4) if wall > 0 else None

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class JobEvent(TenantModel):
    class Level(models.TextChoices):
        INFO = "info", "Info"
        WARN = "warn", "Warning"
        ERROR = "error", "Error"

    id = models.CharField(primary_key=True, max_length=40, default=new_event_id, editable=False)
    job = models.ForeignKey(FineTuningJob, on_delete=models.CASCADE, related_name="events")
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    type = models.CharField(max_length=16, default="message")  # message | metrics
    message = models.TextField()
    data = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["job", "-created_at"], name="ftevent_job_time")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.message[:80]}"


class Checkpoint(TenantModel):
    id = models.CharField(primary_key=True, max_length=40, default=new_checkpoint_id, editable=False)
    job = models.ForeignKey(FineTuningJob, on_delete=models.CASCADE, related_name="checkpoints")
    step_number = models.PositiveIntegerField()
    metrics = models.JSONField(default=dict)
    path = models.CharField(max_length=500)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["job", "step_number"], name="one_checkpoint_per_step")]

    def __str__(self) -> str:
        return f"{self.id} (step {self.step_number})"
