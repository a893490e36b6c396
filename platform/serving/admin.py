from django import forms
from django.contrib import admin

from serving.models import Backend, Deployment, DeploymentEvent


class BackendForm(forms.ModelForm):
    # Replicas live on a private network and usually speak plain HTTP.
    url = forms.URLField(assume_scheme="http", help_text="e.g. http://10.0.0.5:8100")
    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),  # never rendered into the page
        help_text="Shared secret the server requires; never shown. Leave empty to keep the one set.",
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the shared secret.")

    class Meta:
        model = Backend
        fields = ["name", "url", "engine", "base_model", "served_model_name", "api_key", "enabled"]

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk and not cleaned.get("api_key") and not cleaned.get("clear_api_key"):
            cleaned["api_key"] = self.instance.api_key  # unchanged
        elif cleaned.get("clear_api_key"):
            cleaned["api_key"] = ""
        return cleaned


@admin.register(Backend)
class BackendAdmin(admin.ModelAdmin):
    form = BackendForm
    list_display = ["name", "base_model", "engine", "state", "node", "url", "deployment", "healthy", "last_checked_at"]
    list_filter = ["engine", "state", "enabled", "healthy"]
    readonly_fields = ["healthy", "last_checked_at", "last_error", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.deployment_id:  # the pool runs it: its fields are the pool's
            return [f.name for f in Backend._meta.fields if f.name != "api_key"]
        return self.readonly_fields


class DeploymentEventInline(admin.TabularInline):
    model = DeploymentEvent
    fields = ["created_at", "kind", "message", "data"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    ordering = ["-created_at", "-id"]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    """What the pool runs of each model; its policy is the catalog model's (or the endpoint's)."""

    list_display = ["key", "base_model", "engine", "desired", "min_replicas", "max_replicas", "waiting_reason"]
    readonly_fields = [f.name for f in Deployment._meta.fields]
    inlines = [DeploymentEventInline]

    def has_add_permission(self, request):
        return False
