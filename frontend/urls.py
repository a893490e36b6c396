from django.contrib.auth.views import LogoutView
from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

from frontend import views

app_name = "frontend"
urlpatterns = [
    path("", views.home, name="home"),
    path("favicon.ico", RedirectView.as_view(url=static("frontend/favicon.svg"), permanent=True)),
    path("sign-in/", views.SignInView.as_view(), name="sign_in"),
    path("sign-out/", LogoutView.as_view(), name="sign_out"),
    path("sign-up/", views.sign_up, name="sign_up"),
    path("invitations/<str:token>/", views.accept_invitation, name="accept_invitation"),
    path("orgs/<slug:org>/", views.org_overview, name="org"),
    path("orgs/<slug:org>/keys/", views.keys, name="keys"),
    path("orgs/<slug:org>/keys/<uuid:key_id>/revoke/", views.revoke_key, name="revoke_key"),
    path("orgs/<slug:org>/members/", views.members, name="members"),
    path("orgs/<slug:org>/billing/", views.billing, name="billing"),
    path("orgs/<slug:org>/models/", views.models, name="models"),
    path("orgs/<slug:org>/audit/", views.audit_log, name="audit"),
    path("orgs/<slug:org>/playground/", views.playground, name="playground"),
    path(
        "orgs/<slug:org>/playground/usage/<str:request_id>/", views.playground_usage, name="playground_usage"
    ),
    path("orgs/<slug:org>/endpoints/", views.endpoints_page, name="endpoints"),
    path("orgs/<slug:org>/endpoints/<str:endpoint_id>/", views.endpoint, name="endpoint"),
    path("orgs/<slug:org>/endpoints/<str:endpoint_id>/<str:verb>/", views.endpoint_action, name="endpoint_action"),
    path("orgs/<slug:org>/billing/invoices/<int:invoice_id>/", views.invoice, name="invoice"),
    path("orgs/<slug:org>/members/<uuid:member_id>/", views.change_member, name="change_member"),
]
