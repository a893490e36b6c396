"""`python manage.py run` — the whole platform on the embedded default, under one supervisor.

Migrates, seeds the demo data, then runs: web (uvicorn, ASGI), a Celery worker for the default
queue, a Celery worker for the gpu queue (concurrency 1, as on a one-GPU host), Celery beat, and
one model runtime serving the demo model, registered as the gateway's backend. PORT, RUNTIME_PORT
and VAR_DIR choose the ports and the state directory, so two instances can run side by side.
"""

import json
import os
import secrets
import sys
import time

import httpx
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from compute import processes
from maas.supervisor import Program, Supervisor


class Command(BaseCommand):
    help = "Run the whole platform (web, workers, beat) until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--runtime-port", type=int, default=int(os.environ.get("RUNTIME_PORT", "0")) or None)
        parser.add_argument("--no-workers", action="store_true", help="Web only.")

    def handle(self, *args, host, port, runtime_port, no_workers, **options):
        call_command("migrate", interactive=False, verbosity=0)
        call_command("seed_demo")
        runtime_port = runtime_port or port + 100
        runtime = self.runtime_program(runtime_port)
        repo = str(settings.REPO_DIR)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(settings.REPO_DIR / "platform"), repo]),
            "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "maas.settings"),
            "VAR_DIR": str(settings.VAR_DIR),
            "PYTHONUNBUFFERED": "1",
        }
        py = sys.executable
        celery = [py, "-m", "celery", "-A", "maas"]
        tag = f"{port}"
        programs = [
            Program(
                "web",
                [
                    py,
                    "-m",
                    "uvicorn",
                    "maas.asgi:application",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--no-access-log" if os.environ.get("ACCESS_LOG") == "0" else "--access-log",
                    "--forwarded-allow-ips",
                    ",".join(settings.TRUSTED_PROXIES),
                ],
            )
        ]
        if not no_workers:
            programs += [
                Program("worker", processes.celery_worker(["default"], name=f"default-{tag}@%h")),
                Program(
                    "gpu",
                    processes.celery_worker(
                        [settings.FINE_TUNING_QUEUE], name=f"gpu-{tag}@%h", one_task_at_a_time=True
                    ),
                ),
                Program("beat", [*celery, "beat", "-s", str(settings.VAR_DIR / "celerybeat-schedule"), "-l", "INFO"]),
                runtime,
            ]
        url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/"  # noqa: S104
        supervisor = Supervisor(programs, env, cwd=repo)

        def wait_for(url: str, seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not supervisor.stopping.is_set():
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            return False

        def announce():
            if not wait_for(f"http://127.0.0.1:{port}/healthz", 120):
                return
            if not no_workers:
                # The banner says "ready" only once a completion can be served: the runtime answers
                # /health after its model is loaded.
                supervisor.say("run", "web is up; loading the demo model (the first start dequantizes it, ~20 s)…")
                if not wait_for(f"http://127.0.0.1:{runtime_port}/health", 600):
                    supervisor.say("run", "the model runtime is not answering: see the runtime | lines above.")
                    return
            credentials = json.loads((settings.VAR_DIR / "credentials.json").read_text())
            var = "" if settings.VAR_DIR == settings.REPO_DIR / "var" else f"VAR_DIR={settings.VAR_DIR} "
            lines = [
                "",
                "=" * 64,
                "  Ready: the console, the API and the demo model answer.",
                f"  Console:      {url}",
                f"  Back office:  {url}{settings.ADMIN_URL}",
                f"  API docs:     {url}api/docs/",
                f"  OpenAI base:  {url}v1",
                *[f"  Login:        {email} / {password}" for email, password in credentials.items()],
                f"  API key:      {var}.venv/bin/python manage.py create_api_key demo --name my-key",
                "  Stop:         Ctrl-C",
                "=" * 64,
                "",
            ]
            supervisor.say("run", "\n".join(lines))

        sys.exit(supervisor.run(on_started=announce))

    def runtime_program(self, runtime_port: int) -> Program:
        """The demo model's runtime, registered as the gateway's backend with a local shared secret."""
        from catalog.models import BaseModel
        from compute import services as compute
        from serving import services

        secret_file = settings.VAR_DIR / "runtime_api_key"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(32))
            secret_file.chmod(0o600)
        model = BaseModel.objects.get(pk="smollm2-135m-instruct")
        services.register_backend(
            name=f"local-runtime-{runtime_port}",
            url=f"http://127.0.0.1:{runtime_port}",
            base_model=model.pk,
            api_key=secret_file.read_text().strip(),
            node_id=compute.this_node().pk,  # one pool: its dedicated replicas and the training share this host
        )
        adapters = settings.MEDIA_ROOT / "adapters"
        adapters.mkdir(parents=True, exist_ok=True)
        return Program(
            "runtime",
            [
                sys.executable,
                "-m",
                "serving.runtime",
                "--model-source",
                json.dumps(model.source),
                "--served-model-name",
                model.pk,
                "--cache-dir",
                str(settings.MODEL_CACHE_DIR),
                "--adapter-root",
                str(adapters),
                "--port",
                str(runtime_port),
            ],
            env={"MAAS_RUNTIME_API_KEY": secret_file.read_text().strip()},  # not in argv, which ps shows
        )
