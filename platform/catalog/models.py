from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from catalog.loader import SourceError, resolve_source
from tenancy.managers import TenantModel

model_id_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]{1,98}[a-z0-9]$",
    "Use 3-100 lowercase letters, digits, dots, underscores and hyphens.",
)


# The optional generation features a model may lack; a request using one the model does not
# support is a 400 naming the parameter (serving.protocol.generation.FEATURES are the same names).
GENERATION_FEATURES = ("tools", "response_format", "logprobs")


def every_generation_feature() -> list[str]:
    return list(GENERATION_FEATURES)


class BaseModel(models.Model):
    """A hosted base model: what `/v1/models` lists and what fine-tunes start from."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DEPRECATED = "deprecated", "Deprecated (still served, not for new fine-tunes)"
        DISABLED = "disabled", "Disabled (not listed, not served)"

    class Visibility(models.TextChoices):
        PUBLIC = "public", "Every organization"
        RESTRICTED = "restricted", "Only the allowed organizations"

    class Kind(models.TextChoices):
        CHAT = "chat", "Text generation (/v1/chat/completions, /v1/completions)"
        EMBEDDING = "embedding", "Embeddings (/v1/embeddings)"

    id = models.CharField(primary_key=True, max_length=100, validators=[model_id_validator])
    display_name = models.CharField(max_length=200)
    family = models.CharField(max_length=100, help_text="Architecture family, e.g. llama, qwen2, bert.")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CHAT, help_text="What it serves.")
    description = models.TextField(blank=True)
    context_length = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    parameters = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Number of weights; sizes the memory a fine-tune needs (empty: not known, fits any node).",
    )
    default_max_tokens = models.PositiveIntegerField(
        default=1024,
        validators=[MinValueValidator(1)],
        help_text="Tokens a completion may generate when the request sets no max_tokens. The gateway always "
        "sends an explicit cap, so rate limits and reservations hold.",
    )
    source = models.JSONField(help_text='Where the weights are, e.g. {"format": "gguf", "path": "/models/x.gguf"}.')
    features = models.JSONField(
        default=every_generation_feature,
        blank=True,
        help_text=f"What a text-generation model supports of {', '.join(GENERATION_FEATURES)} "
        "(both engines serve all of them; take one out for an upstream that does not).",
    )
    chat_template = models.TextField(blank=True, help_text="Jinja chat template; empty means the model's own.")
    fine_tunable = models.BooleanField(default=False)
    default_lora_targets = models.JSONField(
        default=list,
        blank=True,
        help_text='LoRA targets for "auto", e.g. ["q_proj", "v_proj"]; empty: every linear layer.',
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    visibility = models.CharField(max_length=16, choices=Visibility.choices, default=Visibility.PUBLIC)
    allowed_organizations = models.ManyToManyField("tenancy.Organization", blank=True, related_name="+")
    owned_by = models.CharField(max_length=100, default="system", help_text="Shown as owned_by in /v1/models.")
    # The serving policy: how the pool runs this model's shared (per-token) replicas.
    serving_engine = models.CharField(
        max_length=16,
        choices=[("builtin", "MaaS runtime"), ("vllm", "vLLM")],
        default="builtin",
        help_text="The engine its replicas run.",
    )
    serving_dtype = models.CharField(
        max_length=16,
        choices=[
            ("auto", "auto: bfloat16 where the hardware computes in it natively, else float32"),
            ("float32", "float32"),
            ("bfloat16", "bfloat16"),
            ("float16", "float16"),
        ],
        default="float32",
        help_text=(
            "The weights' type in its replicas; auto is decided on the node that serves it. float32 keeps a row's "
            "greedy answer the same whatever else is in its batch; bfloat16 does not."
        ),
    )
    min_replicas = models.PositiveSmallIntegerField(
        default=0, help_text="Replicas always running; 0: the first call starts one, and idle it stops."
    )
    max_replicas = models.PositiveSmallIntegerField(
        default=2, validators=[MinValueValidator(1)], help_text="Replicas load may scale it up to."
    )
    target_concurrency = models.PositiveSmallIntegerField(
        default=4,
        validators=[MinValueValidator(1)],
        help_text="Concurrent requests per replica; above it for a while, another replica starts.",
    )
    scale_down_idle_seconds = models.PositiveIntegerField(
        default=300, help_text="A replica above the minimum stops after this long without the load that needed it."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "base model"

    def __str__(self) -> str:
        return self.id

    def clean(self) -> None:
        try:
            resolve_source(self.source)
        except SourceError as exc:
            raise ValidationError({"source": str(exc)}) from None
        if not isinstance(self.default_lora_targets, list) or not all(
            isinstance(t, str) for t in self.default_lora_targets
        ):
            raise ValidationError({"default_lora_targets": "A list of module names."})
        if not isinstance(self.features, list) or not set(self.features) <= set(GENERATION_FEATURES):
            raise ValidationError({"features": f"A list of: {', '.join(GENERATION_FEATURES)}."})
        if self.min_replicas > self.max_replicas:
            raise ValidationError({"min_replicas": "At most max_replicas."})
        if self.kind == self.Kind.EMBEDDING and self.fine_tunable:
            raise ValidationError({"fine_tunable": "Embedding models cannot be fine-tuned here."})

    def serving_memory_bytes(self) -> int:
        """What one replica needs on an accelerator: its weights in the serving type, a fifth more
        for buffers, and for a generating model the KV budget (0 when the model's size is not in the
        catalog: fits any)."""
        if not self.parameters:
            return 0
        width = 2 if self.serving_dtype in ("bfloat16", "float16") else 4  # "auto" may be float32 on the node
        kv = settings.SERVING_KV_BUDGET_BYTES if self.kind == self.Kind.CHAT else 0
        return int(self.parameters * width * 1.2) + kv


class FineTunedModel(TenantModel):
    """A LoRA adapter trained for one organization, callable as `ft:<base>:<org>:<suffix>:<id>`."""

    id = models.CharField(primary_key=True, max_length=200)
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="+")
    job_id = models.CharField(max_length=40, help_text="The fine-tuning job that made it.")
    adapter_path = models.CharField(max_length=300, help_text="Relative to the adapter store (the runtime's root).")
    created_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.id

    def adapter_location(self) -> str:
        """Where every engine finds the adapter: the store is mounted at ADAPTER_STORE on every
        host, and an engine resolves no path of ours relative to its own directory (vLLM)."""
        return str(settings.ADAPTER_STORE / self.adapter_path)
