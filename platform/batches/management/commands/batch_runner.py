"""`python manage.py batch_runner` — runs the Batch API's requests (batches.runner) until SIGTERM
or Ctrl-C; the requests it has in flight are given back for another runner to take."""

import asyncio
import signal

from django.core.management.base import BaseCommand

from batches.runner import Runner


class Command(BaseCommand):
    help = "Run batches' requests on the pool's replicas, at the lowest priority."

    def add_arguments(self, parser):
        parser.add_argument(
            "--concurrency", type=int, default=None, help="Requests in flight (default BATCH_RUNNER_CONCURRENCY)"
        )

    def handle(self, *args, concurrency, **options):
        async def main():
            runner = Runner(concurrency=concurrency)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, runner.stop)
            await runner.run()

        asyncio.run(main())
