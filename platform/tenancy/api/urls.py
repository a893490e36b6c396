from django.urls import path
from rest_framework.routers import SimpleRouter

from tenancy.api import views

router = SimpleRouter(trailing_slash="/?")
router.register(r"orgs/(?P<org>[a-z0-9-]+)/members", views.MemberViewSet, basename="members")
router.register(r"orgs/(?P<org>[a-z0-9-]+)/invitations", views.InvitationViewSet, basename="invitations")
router.register(r"orgs/(?P<org>[a-z0-9-]+)/keys", views.APIKeyViewSet, basename="keys")
router.register(r"orgs/(?P<org>[a-z0-9-]+)/audit-log", views.AuditLogViewSet, basename="audit-log")

organization = views.OrganizationDetailViewSet.as_view({"get": "retrieve", "patch": "partial_update"})

urlpatterns = [
    path("me/", views.MeView.as_view(), name="me"),
    path("orgs/", views.OrganizationListView.as_view(), name="orgs"),
    path("orgs/<slug:org>/", organization, name="org-detail"),
    path("invitations/accept/", views.AcceptInvitationView.as_view(), name="accept-invitation"),
    *router.urls,
]
