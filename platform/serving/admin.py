from django import forms
from django.contrib import admin

from serving.models import Backend


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
    list_display = ["name", "base_model", "engine", "url", "enabled", "healthy", "last_checked_at", "last_error"]
    list_filter = ["engine", "enabled", "healthy"]
    readonly_fields = ["healthy", "last_checked_at", "last_error", "created_at"]
