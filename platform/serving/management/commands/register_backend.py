"""python manage.py register_backend NAME --url URL --model BASE_MODEL_ID [--engine builtin|vllm|openai]
[--served-model-name NAME] [--api-key-file FILE] [--node NAME | --this-node]"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from compute import services as compute
from serving import services
from serving.models import Backend


class Command(BaseCommand):
    help = "Register (or update) a model server replica the gateway routes to, then probe it once."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--url", required=True)
        parser.add_argument("--model", required=True, help="The catalog id of the base model it serves")
        parser.add_argument("--engine", default=Backend.Engine.BUILTIN, choices=Backend.Engine.values)
        parser.add_argument("--served-model-name", default="")
        parser.add_argument("--api-key-file", default=None, help="A file holding the server's shared secret")
        pool = parser.add_mutually_exclusive_group()
        pool.add_argument("--node", default=None, help="The pool node it runs on (registered by its GPU workers)")
        pool.add_argument("--this-node", action="store_true", help="It runs on this host's node")

    def handle(self, *args, name, url, model, engine, served_model_name, api_key_file, node, this_node, **options):
        api_key = Path(api_key_file).read_text().strip() if api_key_file else ""
        node_id = None
        if this_node:
            node_id = compute.this_node().pk
        elif node:
            node_id = compute.node_id(node)
            if node_id is None:
                raise CommandError(f"No node {node!r} in the pool; start a GPU worker there first.")
        try:
            backend = services.register_backend(
                name=name,
                url=url,
                base_model=model,
                engine=engine,
                served_model_name=served_model_name,
                api_key=api_key,
                node_id=node_id,
            )
        except services.BackendError as exc:
            raise CommandError(str(exc)) from None
        healthy = services.probe(backend)
        self.stdout.write(
            f"Registered {backend.name} -> {backend.url} ({'healthy' if healthy else 'not answering yet'})"
        )
