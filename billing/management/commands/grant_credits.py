"""python manage.py grant_credits <org-slug> <amount> [--reason TEXT]

Adds prepaid credit to an organization (a negative amount takes it back), with an audit row.
"""

from django.core.management.base import BaseCommand, CommandError

from billing import money, services
from tenancy.audit import Actor
from tenancy.models import Organization


class Command(BaseCommand):
    help = "Add prepaid credit to an organization (audited); a negative amount takes credit back."

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("amount", help="A decimal amount of BILLING_CURRENCY, e.g. 25 or 12.50")
        parser.add_argument("--reason", default="granted by an operator")

    def handle(self, *args, org_slug, amount, reason, **options):
        org = Organization.objects.filter(slug=org_slug).first()
        if org is None:
            raise CommandError(f"No organization '{org_slug}'.")
        try:
            account = services.grant_credits(org.pk, amount, reason=reason, actor=Actor())
        except services.BillingError as error:
            raise CommandError(error.message) from None
        self.stdout.write(f"{org_slug}: credit is now {money.display(account.credit)}.")
