"""`python manage.py node_agent` — this host's node agent (serving.agent): runs the engines of the
replicas the pool places on this node, until SIGTERM or Ctrl-C, which stop them."""

import signal

from django.core.management.base import BaseCommand

from serving.agent import NodeAgent


class Command(BaseCommand):
    help = "Run this node's agent: start, probe, supervise and stop the engines placed here."

    def add_arguments(self, parser):
        parser.add_argument("--address", default=None, help="Where engines listen (default COMPUTE_NODE_ADDRESS)")

    def handle(self, *args, address, **options):
        agent = NodeAgent(address=address)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: agent.stopping.set())
        agent.run()
