from django.contrib.auth import views as auth_views
from django.contrib.auth.views import LogoutView
from django.templatetags.static import static
from django.urls import path, reverse_lazy
from django.views.generic import RedirectView

from frontend.views import account, billing, compute, endpoints, fine_tuning, keys, organization, playground

app_name = "frontend"
urlpatterns = [
    path("", account.home, name="home"),
    path("favicon.ico", RedirectView.as_view(url=static("frontend/favicon.svg"), permanent=True)),
    path("sign-in/", account.SignInView.as_view(), name="sign_in"),
    path("sign-out/", LogoutView.as_view(), name="sign_out"),
    path("sign-up/", account.sign_up, name="sign_up"),
    path("confirm-email/<str:token>/", account.confirm_email, name="confirm_email"),
    # Password reset: Django's views (signed, expiring one-time links; the same answer whether or not
    # the address has an account), in the console's templates, mail through Django's backend.
    path("password-reset/", account.PasswordResetView.as_view(), name="password_reset"),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="frontend/password_reset_sent.html"),
        name="password_reset_sent",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        account.PasswordResetConfirmView.as_view(
            template_name="frontend/password_reset_confirm.html",
            success_url=reverse_lazy("frontend:password_reset_done"),
        ),
        name="password_reset_confirm",
    ),
    path(
        "password-reset/done/",
        auth_views.PasswordResetCompleteView.as_view(template_name="frontend/password_reset_done.html"),
        name="password_reset_done",
    ),
    path("invitations/<str:token>/", account.accept_invitation, name="accept_invitation"),
    path("orgs/<slug:org>/", organization.org_overview, name="org"),
    path("orgs/<slug:org>/keys/", keys.keys, name="keys"),
    path("orgs/<slug:org>/keys/<uuid:key_id>/revoke/", keys.revoke_key, name="revoke_key"),
    path("orgs/<slug:org>/keys/<uuid:key_id>/limit/", keys.key_limit, name="key_limit"),
    path("orgs/<slug:org>/members/", organization.members, name="members"),
    path("orgs/<slug:org>/billing/", billing.billing, name="billing"),
    path("orgs/<slug:org>/usage/", billing.usage, name="usage"),
    path("orgs/<slug:org>/models/", organization.models, name="models"),
    path("orgs/<slug:org>/audit/", organization.audit_log, name="audit"),
    path("orgs/<slug:org>/data/", fine_tuning.data_page, name="data"),
    path("orgs/<slug:org>/data/<str:file_id>/", fine_tuning.data_file, name="data_file"),
    path("orgs/<slug:org>/data/<str:file_id>/download/", fine_tuning.download_file, name="download_file"),
    path("orgs/<slug:org>/fine-tuning/", fine_tuning.fine_tuning_page, name="fine_tuning"),
    path("orgs/<slug:org>/fine-tuning/estimate/", fine_tuning.fine_tuning_estimate, name="fine_tuning_estimate"),
    path("orgs/<slug:org>/fine-tuning/<str:job_id>/", fine_tuning.job_page, name="job"),
    path("orgs/<slug:org>/fine-tuning/<str:job_id>/<str:verb>/", fine_tuning.job_action, name="job_action"),
    path("orgs/<slug:org>/playground/", playground.playground, name="playground"),
    path("orgs/<slug:org>/playground/usage/<str:request_id>/", playground.playground_usage, name="playground_usage"),
    path("orgs/<slug:org>/endpoints/", endpoints.endpoints_page, name="endpoints"),
    path("orgs/<slug:org>/compute/", compute.compute_page, name="compute"),
    path("orgs/<slug:org>/endpoints/<str:endpoint_id>/", endpoints.endpoint, name="endpoint"),
    path("orgs/<slug:org>/endpoints/<str:endpoint_id>/<str:verb>/", endpoints.endpoint_action, name="endpoint_action"),
    path("orgs/<slug:org>/billing/invoices/<int:invoice_id>/", billing.invoice, name="invoice"),
    path("orgs/<slug:org>/members/<uuid:member_id>/", organization.change_member, name="change_member"),
]
