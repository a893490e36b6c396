from django.db import models
from django.utils import timezone


class Worker(models.Model):
    """A Celery worker process that registered itself: where it runs, on what accelerator, which
    queues it takes, and what it is doing. Platform infrastructure, not owned by a tenant."""

    name = models.CharField(max_length=200, unique=True)
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
