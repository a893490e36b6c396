from __future__ import annotations

from django.core.validators import RegexValidator
from rest_framework import serializers

from tenancy import text
from tenancy.errors import ServiceError
from tenancy.models import APIKey, AuditLog, Invitation, Membership, Organization
from tenancy.roles import Role, Scope


class OneLine(RegexValidator):
    """tenancy.text.name's rule on a serializer field, so that the API document states it (as a
    pattern) and a refusal names the character."""

    def __init__(self):
        super().__init__(text.one_line_pattern())

    def __call__(self, value):
        try:
            text.name(value, required=False, max_length=len(value))
        except ServiceError as refused:
            raise serializers.ValidationError(refused.message) from None


class StrictCharField(serializers.CharField):
    """A JSON string, not anything DRF would turn into one (0 would become "0")."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def name_field(**kwargs) -> serializers.CharField:
    return StrictCharField(validators=[OneLine()], **kwargs)


class UserBriefSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    email = serializers.EmailField(read_only=True)
    full_name = serializers.CharField(read_only=True)


class OrganizationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Organization
        fields = ["id", "slug", "name", "status", "created_at"]
        read_only_fields = fields


class OrganizationCreateSerializer(serializers.Serializer):
    slug = serializers.CharField(max_length=40)
    name = name_field(max_length=200, required=False, allow_blank=True, default="")


class OrganizationUpdateSerializer(serializers.Serializer):
    name = name_field(max_length=200)


class MembershipSerializer(serializers.ModelSerializer):
    user = UserBriefSerializer(read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "role", "created_at"]
        read_only_fields = ["id", "user", "created_at"]


class RoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class InvitationSerializer(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True)
    invited_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)

    class Meta:
        model = Invitation
        fields = [
            "id",
            "email",
            "role",
            "status",
            "invited_by",
            "created_at",
            "expires_at",
            "accepted_at",
            "revoked_at",
        ]
        read_only_fields = fields


class InvitationCreateSerializer(serializers.Serializer):
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class IssuedInvitationSerializer(InvitationSerializer):
    accept_url = serializers.CharField(read_only=True, help_text="Shown once; send it to the invitee.")

    class Meta(InvitationSerializer.Meta):
        fields = [*InvitationSerializer.Meta.fields, "accept_url"]
        read_only_fields = fields


class AcceptInvitationSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=200)


class APIKeySerializer(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)

    class Meta:
        model = APIKey
        fields = [
            "id",
            "name",
            "prefix",
            "scopes",
            "status",
            "created_by",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
        ]
        read_only_fields = fields


class APIKeyCreateSerializer(serializers.Serializer):
    name = name_field(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=[s.value for s in Scope]),
        required=False,
        allow_empty=False,
        help_text="Defaults to ['all'].",
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class IssuedAPIKeySerializer(APIKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The secret key. Shown once; store it safely.")

    class Meta(APIKeySerializer.Meta):
        fields = [*APIKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class AuditLogSerializer(serializers.ModelSerializer):
    actor = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)
    api_key = serializers.SerializerMethodField()

    class Meta:
        model = AuditLog
        fields = ["id", "at", "action", "actor", "api_key", "target_type", "target_id", "data", "ip"]
        read_only_fields = fields

    def get_api_key(self, row: AuditLog) -> str | None:
        return str(row.actor_api_key_id) if row.actor_api_key_id else None
