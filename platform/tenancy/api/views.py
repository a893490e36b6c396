"""Management API for organizations, members, invitations, API keys and the audit log."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, mixins, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from tenancy import selectors, services
from tenancy.api import serializers as s
from tenancy.api.permissions import SessionOnly, SignedInOrKey
from tenancy.api.scoping import ORG_PARAMETER, OrgScopedViewSet
from tenancy.audit import Actor
from tenancy.keyauth import KeyPrincipal
from tenancy.models import APIKey, AuditLog, Invitation, Membership
from tenancy.roles import Permission as P

org_param = extend_schema(parameters=[ORG_PARAMETER])


class OrganizationListView(APIView):
    """The caller's organizations; a signed-in user may create another one (and owns it)."""

    permission_classes = [SignedInOrKey]

    @extend_schema(
        operation_id="orgs_list",
        responses=inline_serializer(
            "OrganizationList",
            {
                "object": serializers.CharField(),
                "data": s.OrganizationSerializer(many=True),
                "has_more": serializers.BooleanField(),
            },
        ),
    )
    def get(self, request):
        if isinstance(request.auth, KeyPrincipal):
            access = selectors.access_by_key(request.auth, request.auth.organization_slug)
            orgs = [access.organization] if access else []
        else:
            orgs = [m.organization for m in selectors.memberships_of_user(request.user)]
        data = s.OrganizationSerializer(orgs, many=True).data
        return Response({"object": "list", "data": data, "has_more": False})

    @extend_schema(request=s.OrganizationCreateSerializer, responses={201: s.OrganizationSerializer})
    def post(self, request):
        if not SessionOnly().has_permission(request, self):
            raise exceptions.PermissionDenied(SessionOnly.message)
        body = s.OrganizationCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        org = services.create_organization(owner=request.user, actor=Actor.from_request(request), **body.validated_data)
        return Response(s.OrganizationSerializer(org).data, status=status.HTTP_201_CREATED)


@org_param
class OrganizationDetailViewSet(OrgScopedViewSet):
    permissions = {"retrieve": P.ORG_VIEW, "partial_update": P.ORG_MANAGE}
    serializer_class = s.OrganizationSerializer

    def retrieve(self, request, org):
        return Response(s.OrganizationSerializer(self.organization).data)

    @extend_schema(request=s.OrganizationUpdateSerializer, responses=s.OrganizationSerializer)
    def partial_update(self, request, org):
        body = s.OrganizationUpdateSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        if "name" not in body.validated_data:  # a PATCH changes what it names, and this one names nothing
            return Response(s.OrganizationSerializer(self.organization).data)
        updated = services.rename_organization(self.organization.pk, name=body.validated_data["name"], actor=self.actor)
        return Response(s.OrganizationSerializer(updated).data)


@org_param
class MemberViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    model = Membership
    serializer_class = s.MembershipSerializer
    # Leaving is allowed to everyone; removing someone else is checked in destroy().
    permissions = {
        "list": P.MEMBERS_VIEW,
        "retrieve": P.MEMBERS_VIEW,
        "partial_update": P.MEMBERS_MANAGE,
        "destroy": P.ORG_VIEW,
    }

    def get_queryset(self):
        return super().get_queryset().select_related("user")

    @extend_schema(request=s.RoleSerializer, responses=s.MembershipSerializer)
    def partial_update(self, request, org, pk):
        member = self.get_object()
        body = s.RoleSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        if "role" not in body.validated_data:  # a PATCH changes what it names, and this one names nothing
            return Response(s.MembershipSerializer(member).data)
        updated = services.change_role(
            member.pk,
            organization_id=self.organization.pk,
            role=body.validated_data["role"],
            actor_role=self.access.role,
            actor=self.actor,
        )
        return Response(s.MembershipSerializer(updated).data)

    def destroy(self, request, org, pk):
        member = self.get_object()
        leaving = self.access.user_id == member.user_id and self.access.key_id is None
        if not leaving and not self.access.can(P.MEMBERS_MANAGE):
            raise exceptions.PermissionDenied("Your role does not allow removing members.")
        services.remove_member(
            member.pk, organization_id=self.organization.pk, actor_role=self.access.role, actor=self.actor
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


@org_param
class InvitationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    model = Invitation
    serializer_class = s.InvitationSerializer
    permissions = {"*": P.MEMBERS_MANAGE}

    def get_queryset(self):
        return super().get_queryset().select_related("invited_by")

    @extend_schema(request=s.InvitationCreateSerializer, responses={201: s.IssuedInvitationSerializer})
    def create(self, request, org):
        body = s.InvitationCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        issued = services.invite(
            organization_id=self.organization.pk, actor_role=self.access.role, actor=self.actor, **body.validated_data
        )
        data = dict(s.InvitationSerializer(issued.invitation).data)
        data["accept_url"] = request.build_absolute_uri(reverse("frontend:accept_invitation", args=[issued.token]))
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: s.InvitationSerializer})
    def destroy(self, request, org, pk):
        invitation = self.get_object()
        revoked = services.revoke_invitation(invitation.pk, organization_id=self.organization.pk, actor=self.actor)
        return Response(s.InvitationSerializer(revoked).data)


@org_param
class APIKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrgScopedViewSet):
    """Owners and admins see and revoke every key; members only their own."""

    model = APIKey
    serializer_class = s.APIKeySerializer
    permissions = {"*": P.KEYS_OWN}

    def get_queryset(self):
        return selectors.visible_keys(self.access)

    @extend_schema(request=s.APIKeyCreateSerializer, responses={201: s.IssuedAPIKeySerializer})
    def create(self, request, org):
        body = s.APIKeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        # A key made with an `all`-scoped key is attributed to that key's creator.
        creator_id = request.user.pk if request.user.is_authenticated else self.access.user_id
        issued = services.create_api_key(
            organization_id=self.organization.pk,
            created_by_id=creator_id,
            member_only=not self.access.can(P.KEYS_MANAGE),
            actor=self.actor,
            **body.validated_data,
        )
        data = dict(s.APIKeySerializer(issued.key).data)
        data["key"] = issued.plaintext
        return Response(data, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})

    @extend_schema(responses={200: s.APIKeySerializer})
    def destroy(self, request, org, pk):
        key = self.get_object()
        revoked = services.revoke_api_key(key.pk, organization_id=self.organization.pk, actor=self.actor)
        return Response(s.APIKeySerializer(revoked).data)


@org_param
class AuditLogViewSet(mixins.ListModelMixin, OrgScopedViewSet):
    model = AuditLog
    serializer_class = s.AuditLogSerializer
    permissions = {"*": P.AUDIT_VIEW}
    cursor_field = "at"

    def get_queryset(self):
        return super().get_queryset().select_related("actor")


class AcceptInvitationView(APIView):
    permission_classes = [SessionOnly]

    @extend_schema(request=s.AcceptInvitationSerializer, responses=s.MembershipSerializer)
    def post(self, request):
        body = s.AcceptInvitationSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        membership = services.accept_invitation(
            token=body.validated_data["token"], user=request.user, actor=Actor.from_request(request)
        )
        return Response(s.MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)


class MeView(APIView):
    permission_classes = [SignedInOrKey]

    @extend_schema(responses=OpenApiTypes.OBJECT, description="The signed-in user and their organizations, or the key.")
    def get(self, request):
        if isinstance(request.auth, KeyPrincipal):
            p = request.auth
            return Response(
                {
                    "object": "api_key",
                    "id": p.key_id,
                    "name": p.name,
                    "organization": p.organization_slug,
                    "scopes": sorted(p.scopes),
                }
            )
        memberships = selectors.memberships_of_user(request.user)
        return Response(
            {
                "object": "user",
                "id": request.user.pk,
                "email": request.user.email,
                "full_name": request.user.full_name,
                "organizations": [
                    {"slug": m.organization.slug, "name": m.organization.name, "role": m.role} for m in memberships
                ],
            }
        )
