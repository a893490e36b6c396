from django.db import models
from django.utils import timezone


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
    enabled = models.BooleanField(default=True)
    healthy = models.BooleanField(default=False)
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
