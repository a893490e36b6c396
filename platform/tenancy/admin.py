"""Back office for tenancy. The admin site runs every view in the all-organizations scope
(maas.admin_site), so these pages see every tenant; actions go through the services."""

from django.contrib import admin, messages
from django.contrib.auth import get_user_model

from accounts.admin import UserAdmin
from tenancy import services
from tenancy.audit import Actor
from tenancy.models import APIKey, AuditLog, Invitation, Membership, Organization


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ["user", "role", "created_at"]
    readonly_fields = ["user", "role", "created_at"]
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["slug", "name"]
    readonly_fields = ["slug", "status", "suspended_reason", "created_at"]
    inlines = [MembershipInline]
    actions = ["suspend", "reactivate"]

    def has_add_permission(self, request):
        return False  # an organization needs an owner: sign-up, the API or `manage.py create_org`

    def save_model(self, request, obj, form, change):
        actor = Actor.from_request(request)
        if "name" in form.changed_data:
            services.rename_organization(obj.pk, name=obj.name, actor=actor)
        if {"rpm_limit", "tpm_limit"} & set(form.changed_data):
            services.set_organization_limits(obj.pk, rpm=obj.rpm_limit, tpm=obj.tpm_limit, actor=actor)
        if "storage_quota_bytes" in form.changed_data:
            services.set_storage_quota(obj.pk, quota=obj.storage_quota_bytes, actor=actor)

    @admin.action(description="Suspend selected organizations (their API keys stop working at once)")
    def suspend(self, request, queryset):
        for org in queryset:
            services.suspend_organization(
                org.pk, reason="Suspended by the platform operator.", actor=Actor.from_request(request)
            )
        self.message_user(request, f"Suspended {queryset.count()} organization(s).", messages.SUCCESS)

    @admin.action(description="Reactivate selected organizations")
    def reactivate(self, request, queryset):
        for org in queryset:
            services.reactivate_organization(org.pk, actor=Actor.from_request(request))
        self.message_user(request, f"Reactivated {queryset.count()} organization(s).", messages.SUCCESS)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "organization__slug"]
    list_select_related = ["user", "organization"]
    raw_id_fields = ["user", "organization"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["email", "organization", "role", "status", "created_at", "expires_at"]
    search_fields = ["email", "organization__slug"]
    exclude = ["token_hash"]
    readonly_fields = [
        "organization",
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "revoked_at",
    ]
    list_select_related = ["organization"]

    def has_add_permission(self, request):
        return False  # the token must be shown to the inviter: invite from the console or the API


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "organization", "status", "created_at", "last_used_at", "expires_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "organization__slug"]
    exclude = ["key_hash"]  # never shown, even hashed
    readonly_fields = [
        "organization",
        "name",
        "prefix",
        "scopes",
        "created_by",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    ]
    list_select_related = ["organization"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False  # the plaintext is shown once: create keys from the console, the API or create_api_key

    def save_model(self, request, obj, form, change):
        # Only the rate limits are editable; the service republishes the key's cached state.
        services.set_key_limits(
            obj.pk,
            organization_id=obj.organization_id,
            rpm=obj.rpm_limit,
            tpm=obj.tpm_limit,
            actor=Actor.from_request(request),
        )

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: the audit trail keeps the key's row

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        for key in queryset:
            services.revoke_api_key(key.pk, organization_id=key.organization_id, actor=Actor.from_request(request))
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows only their services write: the back office looks, and never adds, edits or deletes."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    list_display = ["at", "action", "organization", "actor", "target_type", "target_id", "ip"]
    list_filter = ["action"]
    search_fields = ["action", "actor__email", "organization__slug", "target_id"]
    list_select_related = ["organization", "actor"]
    date_hierarchy = "at"


admin.site.unregister(get_user_model())


@admin.register(get_user_model())
class TenantUserAdmin(UserAdmin):
    """Deactivating or deleting a user goes through the services, which revoke the keys they created."""

    def save_model(self, request, obj, form, change):
        deactivating = change and "is_active" in form.changed_data and not obj.is_active
        if deactivating:
            obj.is_active = True  # the service makes the change, under its lock, with the keys
        super().save_model(request, obj, form, change)
        if deactivating:
            services.deactivate_user(obj.pk, actor=Actor(user=request.user))
            obj.is_active = False

    def delete_model(self, request, obj):
        services.delete_user(obj.pk, actor=Actor(user=request.user))

    def delete_queryset(self, request, queryset):
        for user in list(queryset):
            services.delete_user(user.pk, actor=Actor(user=request.user))
