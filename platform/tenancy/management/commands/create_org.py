"""python manage.py create_org <slug> --owner <email> [--name NAME]"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from tenancy import services
from tenancy.audit import Actor


class Command(BaseCommand):
    help = "Create an organization owned by a user (created with a generated password if new)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--owner", required=True, help="The owner's email address.")
        parser.add_argument("--name", default="", help="Display name (defaults to the slug).")

    def handle(self, *args, slug, owner, name, **options):
        import secrets

        User = get_user_model()
        user = User.objects.filter(email__iexact=owner).first()
        password = None
        if user is None:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_user(email=owner, password=password)
        try:
            org = services.create_organization(slug=slug, name=name, owner=user, actor=Actor.system())
        except services.ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Created organization {org.slug} owned by {user.email}")
        if password:
            self.stdout.write(f"New user {user.email}, password: {password}")
