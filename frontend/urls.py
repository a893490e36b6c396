from django.contrib.auth.views import LogoutView
from django.urls import path

from frontend import views

app_name = "frontend"
urlpatterns = [
    path("", views.home, name="home"),
    path("sign-in/", views.SignInView.as_view(), name="sign_in"),
    path("sign-out/", LogoutView.as_view(), name="sign_out"),
    path("sign-up/", views.sign_up, name="sign_up"),
    path("invitations/<str:token>/", views.accept_invitation, name="accept_invitation"),
    path("orgs/<slug:org>/", views.org_overview, name="org"),
    path("orgs/<slug:org>/keys/", views.keys, name="keys"),
    path("orgs/<slug:org>/keys/<uuid:key_id>/revoke/", views.revoke_key, name="revoke_key"),
    path("orgs/<slug:org>/members/", views.members, name="members"),
    path("orgs/<slug:org>/billing/", views.billing, name="billing"),
    path("orgs/<slug:org>/billing/invoices/<int:invoice_id>/", views.invoice, name="invoice"),
    path("orgs/<slug:org>/members/<uuid:member_id>/", views.change_member, name="change_member"),
]
