"""python manage.py close_invoices [--org SLUG --month YYYY-MM]

The monthly close, as beat runs it hourly: every organization's every ended month with usage and
no invoice gets one. With --org and --month, that organization's month only. Idempotent.
"""

from datetime import date

from django.core.management.base import BaseCommand, CommandError

from billing import invoicing, money
from tenancy.models import Organization


class Command(BaseCommand):
    help = "Make the invoices of ended months (idempotent); --org and --month for one."

    def add_arguments(self, parser):
        parser.add_argument("--org", help="An organization's slug (with --month).")
        parser.add_argument("--month", help="YYYY-MM (with --org).")

    def handle(self, *args, org=None, month=None, **options):
        if bool(org) != bool(month):
            raise CommandError("--org and --month go together.")
        if org:
            found = Organization.objects.filter(slug=org).first()
            if found is None:
                raise CommandError(f"No organization '{org}'.")
            try:
                first = date.fromisoformat(f"{month}-01")
            except ValueError:
                raise CommandError(f"--month is YYYY-MM (got '{month}').") from None
            try:
                invoice = invoicing.close_month(found.pk, first)
            except invoicing.CloseError as error:
                raise CommandError(str(error)) from None
            invoices = [invoice] if invoice is not None else []
        else:
            invoices = invoicing.close_due()
        for invoice in invoices:
            self.stdout.write(
                f"{invoice.number}: {money.display(invoice.subtotal, 2)}, due {money.display(invoice.amount_due, 2)}"
            )
        if not invoices:
            self.stdout.write("Nothing to invoice.")
