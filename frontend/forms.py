from django import forms
from django.contrib.auth.forms import AuthenticationForm

from tenancy.roles import Role, Scope


class SignInForm(AuthenticationForm):
    username = forms.EmailField(
        label="Email", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"})
    )

    def confirm_login_allowed(self, user):
        super().confirm_login_allowed(user)
        if user.email_verified_at is None:
            # The password was right, so saying this reveals nothing to someone who lacks it.
            self.unconfirmed = user
            raise forms.ValidationError(
                "Confirm your email address first: we have sent a new link to it.", code="unconfirmed"
            )


class SignUpForm(forms.Form):
    email = forms.EmailField()
    full_name = forms.CharField(max_length=200, required=False, label="Your name")
    organization_name = forms.CharField(max_length=200, required=False, label="Organization name")
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), min_length=10)


class NewKeyForm(forms.Form):
    name = forms.CharField(max_length=100)
    scopes = forms.MultipleChoiceField(
        choices=[(s.value, s.value) for s in Scope], initial=[Scope.ALL.value], widget=forms.CheckboxSelectMultiple
    )
    expires_at = forms.DateTimeField(
        required=False, label="Expires at (UTC, optional)", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )


class InviteForm(forms.Form):
    email = forms.EmailField()
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class EndpointForm(forms.Form):
    """Publishing an endpoint: the model and the settings people set most; the rest (access list,
    stop sequences, penalties) through the API. Blank means "not set"."""

    name = forms.CharField(max_length=100)
    model = forms.ChoiceField(help_text="A base model, or one of your fine-tuned models.")
    system_prompt = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    temperature = forms.FloatField(required=False, min_value=0, max_value=2, label="Default temperature")
    max_tokens = forms.IntegerField(required=False, min_value=1, label="Default max_tokens")
    max_tokens_cap = forms.IntegerField(required=False, min_value=1, label="Max tokens cap")
    rpm_limit = forms.IntegerField(required=False, min_value=1, label="Requests per minute")
    tpm_limit = forms.IntegerField(required=False, min_value=1, label="Tokens per minute")
    billing_mode = forms.ChoiceField(
        choices=[("per_token", "Per token, at the model's price"), ("dedicated", "Dedicated: per replica-minute")]
    )
    replicas = forms.IntegerField(min_value=1, max_value=16, initial=1)

    def __init__(self, *args, models: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [(m, m) for m in models]

    def settings(self) -> dict:
        """The endpoint service's settings from the cleaned form."""
        data = self.cleaned_data
        defaults = {k: data[k] for k in ("temperature", "max_tokens") if data.get(k) is not None}
        found = {
            "name": data["name"],
            "defaults": defaults,
            "system_prompt": data["system_prompt"],
            "billing_mode": data["billing_mode"],
            "replicas": data["replicas"],
        }
        found.update({k: data[k] for k in ("max_tokens_cap", "rpm_limit", "tpm_limit")})
        return found


class UploadForm(forms.Form):
    file = forms.FileField(
        label="Training data (.jsonl)", help_text="One example per line: chat `messages`, or `prompt` and `completion`."
    )


class FineTuneForm(forms.Form):
    """A fine-tune as a customer starts one: blank hyperparameters are "auto"."""

    model = forms.ChoiceField(label="Base model")
    training_file = forms.ChoiceField(help_text="A validated file (status: processed).")
    validation_file = forms.ChoiceField(
        required=False, help_text="Optional. Without one, a few training examples are held out to measure the model."
    )
    n_epochs = forms.IntegerField(
        required=False, min_value=1, max_value=50, label="Epochs", help_text="Blank: auto (3, more for small files)."
    )
    batch_size = forms.IntegerField(
        required=False, min_value=1, max_value=256, help_text="Blank: auto (about 0.2 % of the examples, 1 to 32)."
    )
    learning_rate_multiplier = forms.FloatField(
        required=False, min_value=0.01, max_value=10, help_text="Blank: auto (1.0)."
    )
    suffix = forms.CharField(required=False, max_length=64, help_text="Part of the fine-tuned model's name.")

    def __init__(self, *args, models: list[str], files: list[tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [(m, m) for m in models]
        self.fields["training_file"].choices = files
        self.fields["validation_file"].choices = [("", "none"), *files]

    def hyperparameters(self) -> dict:
        data = self.cleaned_data
        return {k: data[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier") if data.get(k) is not None}
