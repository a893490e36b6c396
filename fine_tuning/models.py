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
    """An uploaded file (OpenAI's FileObject). Training data is validated line by line at upload."""

    class Purpose(models.TextChoices):
        FINE_TUNE = "fine-tune", "Fine-tuning data"

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
