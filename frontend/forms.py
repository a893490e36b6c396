from django import forms
from django.contrib.auth.forms import AuthenticationForm

from tenancy.roles import Role, Scope


class SignInForm(AuthenticationForm):
    username = forms.EmailField(
        label="Email", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"})
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
