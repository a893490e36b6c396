"""The `endpoints` scope gave endpoint management to keys that members made. Since the split into
`endpoints:read` and `endpoints:write`, a member may grant only the first: a live key whose
creator is not an owner or admin of its organization today keeps `endpoints:read` in place of
`endpoints` (what its creator may still grant). Keys made by operators (no creator) keep theirs."""

from django.db import migrations

MANAGERS = ("owner", "admin")


def narrow(apps, schema_editor):
    APIKey = apps.get_model("tenancy", "APIKey")
    Membership = apps.get_model("tenancy", "Membership")
    keys = APIKey.objects.filter(revoked_at=None, created_by__isnull=False)
    for key in keys.iterator():
        if "endpoints" not in key.scopes:
            continue
        role = (
            Membership.objects.filter(organization_id=key.organization_id, user_id=key.created_by_id)
            .values_list("role", flat=True)
            .first()
        )
        if role in MANAGERS:
            continue
        key.scopes = list(dict.fromkeys("endpoints:read" if s == "endpoints" else s for s in key.scopes))
        key.save(update_fields=["scopes"])


class Migration(migrations.Migration):
    dependencies = [("tenancy", "0003_apikey_console_user")]

    operations = [migrations.RunPython(narrow, migrations.RunPython.noop)]
