from django.core.management.base import BaseCommand

from billing import services


class Command(BaseCommand):
    help = "Move the usage records spooled on this host (by web processes that stopped) into the ledger."

    def handle(self, *args, **options):
        count = services.drain_outbox()
        self.stdout.write(f"{count} usage record(s) drained into the ledger.")
