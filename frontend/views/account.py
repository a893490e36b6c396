"""Signing in, up and out, password reset, and following an invitation."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.core.mail import send_mail
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse, reverse_lazy

from frontend.forms import (
    SignInForm,
    SignUpForm,
)
from frontend.views.access import too_many_attempts
from tenancy import selectors, services, throttle
from tenancy.audit import Actor, client_ip


def throttled_sign_in(request, sign_in, refuse):
    """Run a sign-in view's POST under the sign-in throttle (tenancy.throttle); `refuse(wait)`
    answers an attempt that is one too many."""
    ip, email = client_ip(request), request.POST.get("username", "")[:254]
    wait = throttle.sign_in_attempt(ip, email)
    if wait:
        return refuse(wait)
    response = sign_in()
    if request.user.is_authenticated:
        throttle.sign_in_succeeded(ip, email)
    return response


def send_confirmation(request, user) -> None:
    """Mail the link that confirms a new account's address."""
    link = request.build_absolute_uri(reverse("frontend:confirm_email", args=[services.email_verification_token(user)]))
    body = render_to_string("frontend/confirm_email.txt", {"link": link, "hours": settings.EMAIL_VERIFICATION_HOURS})
    send_mail("Confirm your email address", body, None, [user.email])


def _already_registered(request, email: str) -> None:
    """Someone signed up with an address that has an account: its owner is told, the page is not."""
    body = render_to_string(
        "frontend/sign_up_taken.txt", {"sign_in": request.build_absolute_uri(reverse("frontend:sign_in"))}
    )
    send_mail("Someone tried to create an account with your address", body, None, [email])


class SignInView(LoginView):
    """Django's sign-in, throttled per client IP and per account (tenancy.throttle). An account
    whose address is not confirmed is not signed in; a new link is mailed to it."""

    template_name = "frontend/sign_in.html"
    authentication_form = SignInForm
    redirect_authenticated_user = True

    def form_invalid(self, form):
        unconfirmed = getattr(form, "unconfirmed", None)
        if unconfirmed is not None:
            send_confirmation(self.request, unconfirmed)
        return super().form_invalid(form)

    def post(self, request, *args, **kwargs):
        return throttled_sign_in(
            request,
            lambda: super(SignInView, self).post(request, *args, **kwargs),
            lambda wait: too_many_attempts(
                request, self.template_name, self.get_context_data(form=self.get_form()), wait
            ),
        )


def back_office_sign_in(request, **kwargs):
    """The back office's own sign-in page behind the same throttle as the console's."""
    from django.contrib import admin
    from django.http import HttpResponse

    def refuse(wait: int):
        response = HttpResponse(
            f"Too many sign-in attempts from here. Try again in {max(1, wait // 60)} minutes.\n",
            status=429,
            content_type="text/plain",
        )
        response["Retry-After"] = str(wait)
        return response

    if request.method != "POST":
        return admin.site.login(request, **kwargs)
    return throttled_sign_in(request, lambda: admin.site.login(request, **kwargs), refuse)


class PasswordResetView(auth_views.PasswordResetView):
    """Django's reset (signed one-time links; the same answer whether or not the address has an
    account), throttled: too many requests from one client get 429; past a few mails to one
    account in the window, the page answers as usual and sends nothing more."""

    template_name = "frontend/password_reset.html"
    email_template_name = "frontend/password_reset_email.txt"
    subject_template_name = "frontend/password_reset_subject.txt"
    success_url = reverse_lazy("frontend:password_reset_sent")

    def form_valid(self, form):
        wait, may_send = throttle.password_reset_allowed(client_ip(self.request), form.cleaned_data["email"])
        if wait:
            return too_many_attempts(self.request, self.template_name, self.get_context_data(form=form), wait)
        if not may_send:
            return redirect(self.success_url)
        return super().form_valid(form)


def sign_up(request):
    if request.user.is_authenticated:
        return redirect("frontend:home")
    invitation_token = request.POST.get("invitation") or request.GET.get("invitation") or ""
    invitation = selectors.invitation_by_token(invitation_token) if invitation_token else None
    initial = {"email": invitation.email} if invitation is not None else None
    form = SignUpForm(request.POST or None, initial=initial)
    context = {"form": form, "invitation": invitation, "invitation_token": invitation_token}
    context["mode"] = settings.SIGN_UP_MODE
    if request.method == "POST":
        wait = throttle.sign_up_allowed(client_ip(request))
        if wait:
            return too_many_attempts(request, "frontend/sign_up.html", context, wait)
    if request.method == "POST" and form.is_valid():
        email = form.cleaned_data["email"]
        try:
            user, org = services.sign_up(
                actor=Actor.from_request(request), invitation_token=invitation_token, **form.cleaned_data
            )
        except services.ServiceError as exc:
            if exc.code == "email_taken" and not invitation_token:
                # The same answer as a new account's: the page never tells whether an address has one.
                _already_registered(request, email)
                return render(request, "frontend/sign_up_sent.html", {"email": email})
            form.add_error(exc.param if exc.param in form.fields else None, exc.message)
        else:
            if user.email_verified_at is None:
                send_confirmation(request, user)
                return render(request, "frontend/sign_up_sent.html", {"email": email})
            # Following an invitation mailed to the address proved it: signed in at once.
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("frontend:org", org=org.slug)
    return render(request, "frontend/sign_up.html", context)


def confirm_email(request, token):
    """The link mailed at sign-up: the address is confirmed and its owner signed in."""
    try:
        user = services.verify_email(token, actor=Actor.from_request(request))
    except services.ServiceError as exc:
        return render(request, "frontend/confirm_email_failed.html", {"message": exc.message}, status=400)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    messages.success(request, "Your email address is confirmed.")
    return redirect("frontend:home")


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    """Django's reset confirmation; the link came to the address, so it is confirmed too (an
    address signed up by someone else comes back to its owner this way)."""

    def form_valid(self, form):
        response = super().form_valid(form)  # saves the user (the whole row): confirm after it
        services.mark_email_verified(self.user.pk)
        return response


@login_required
def home(request):
    memberships = selectors.memberships_of_user(request.user)
    if len(memberships) == 1:
        return redirect("frontend:org", org=memberships[0].organization.slug)
    return render(request, "frontend/home.html", {"memberships": memberships})


def accept_invitation(request, token):
    """Open to the signed-out too: the page offers to sign in, or to create an account that joins."""
    invitation = selectors.invitation_by_token(token)
    if request.method == "POST" and not request.user.is_authenticated:
        return redirect(f"{reverse('frontend:sign_in')}?next={request.path}")
    if request.method == "POST":
        try:
            membership = services.accept_invitation(token=token, user=request.user, actor=Actor.from_request(request))
        except services.ServiceError as exc:
            messages.error(request, exc.message)
        else:
            return redirect("frontend:org", org=membership.organization.slug)
    return render(request, "frontend/accept_invitation.html", {"invitation": invitation})
