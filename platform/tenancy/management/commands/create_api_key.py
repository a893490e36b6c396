"""python manage.py create_api_key <org-slug> --name NAME [--scopes S ...] [--expires-in-days N]

Prints the new key alone on its last line, so scripts can take it with `tail -n 1`.
"""

from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone

from tenancy import services
from tenancy.audit import Actor
from tenancy.models import Organization
from tenancy.roles import Scope


class Command(BaseCommand):
    help = "Create an API key for an organization and print it (shown once)."

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("--name", required=True)
        parser.add_argument("--scopes", nargs="+", default=[Scope.ALL.value], choices=[s.value for s in Scope])
        parser.add_argument("--expires-in-days", type=int, default=None)

    def handle(self, *args, org_slug, name, scopes, expires_in_days, **options):
        database = settings.DATABASES["default"]
        where = "VAR_DIR" if database["ENGINE"].endswith("sqlite3") else "DATABASE_URL"
        hint = f"Run this with the {where} that `make run` uses (e.g. VAR_DIR=/tmp/maas2 python manage.py ...)."
        if database["ENGINE"].endswith("sqlite3") and not Path(database["NAME"]).exists():
            # Opening it would create an empty, stray database.
            raise CommandError(f"There is no database at {database['NAME']}. {hint}")
        try:
            org = Organization.objects.filter(slug=org_slug).first()
        except DatabaseError:
            message = f"The database at {database['NAME']} is not set up (`make run` migrates it). {hint}"
            raise CommandError(message) from None
        if org is None:
            raise CommandError(f"No organization with slug {org_slug!r} in the database at {database['NAME']}. {hint}")
        expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
        try:
            issued = services.create_api_key(
                organization_id=org.pk, name=name, scopes=scopes, expires_at=expires_at, actor=Actor.system()
            )
        except services.ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(
            f"Created key {issued.key.prefix}… ({', '.join(scopes)}) for {org.slug}. It is shown once, below:"
        )
        self.stdout.write(issued.plaintext)
