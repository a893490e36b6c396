"""Seed the embedded default: a platform admin, a demo organization and its owner.

Passwords are generated once and kept in VAR_DIR/credentials.json (mode 0600), never in the
repository; running again reuses them.
"""

import json
import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from tenancy import services
from tenancy.audit import Actor
from tenancy.models import Organization

ADMIN_EMAIL = "admin@example.com"
OWNER_EMAIL = "owner@example.com"
DEMO_ORG = "demo"


class Command(BaseCommand):
    help = "Create the demo admin, organization and owner if missing; print where the logins are."

    def handle(self, *args, **options):
        path = settings.VAR_DIR / "credentials.json"
        credentials = json.loads(path.read_text()) if path.exists() else {}
        User = get_user_model()
        with transaction.atomic():
            for email, superuser in ((ADMIN_EMAIL, True), (OWNER_EMAIL, False)):
                user = User.objects.filter(email=email).first()
                if user is None or email not in credentials:
                    password = secrets.token_urlsafe(12)
                    if user is None:
                        user = User.objects.create_user(email, password, is_staff=superuser, is_superuser=superuser)
                    else:
                        user.set_password(password)
                        user.save(update_fields=["password"])
                    credentials[email] = password
            if not Organization.objects.filter(slug=DEMO_ORG).exists():
                services.create_organization(
                    slug=DEMO_ORG,
                    name="Demo organization",
                    owner=User.objects.get(email=OWNER_EMAIL),
                    actor=Actor.system(),
                )
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(credentials, handle, indent=2)
        self.stdout.write(f"Demo logins are in {path}")
