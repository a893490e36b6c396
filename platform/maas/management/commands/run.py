"""`python manage.py run` — the whole platform on the embedded default, under one supervisor.

Migrates, seeds the demo data, then runs: web (uvicorn, ASGI), a Celery worker for the default
queue, a Celery worker for the gpu queue (concurrency 1, as on a one-GPU host), Celery beat, and
this host's node agent, which runs the engines of the replicas the pool places here — the demo
model's first (its serving policy keeps one replica) — and the batch runner, which runs the Batch
API's requests on those replicas. PORT and VAR_DIR choose the port and the
state directory, so two instances can run side by side (engines take free ports).
"""

import json
import os
import signal
import sys
import time

import httpx
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from compute import processes
from maas.supervisor import Program, Supervisor

DEMO_MODEL = "smollm2-135m-instruct"  # seeded by seed_demo; its serving policy keeps one replica


class Command(BaseCommand):
    help = "Run the whole platform (web, workers, beat) until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--no-workers", action="store_true", help="Web only.")

    def handle(self, *args, host, port, no_workers, **options):
        call_command("migrate", interactive=False, verbosity=0)
        call_command("seed_demo")
        self.retire_hand_registered_runtimes()
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
                    # Orphaned, it stops at once (Celery's cold shutdown) and its trainer with it:
                    # SIGTERM's warm shutdown would go on training for a platform that is gone.
                    death_signal=signal.SIGQUIT,
                ),
                Program("beat", [*celery, "beat", "-s", str(settings.VAR_DIR / "celerybeat-schedule"), "-l", "INFO"]),
                # This host's node agent: it runs the engines the pool places here, the demo model's first.
                Program("agent", [py, "manage.py", "node_agent"], death_signal=signal.SIGTERM),
                # The Batch API's requests, on the same replicas, after interactive calls.
                Program("batches", [py, "manage.py", "batch_runner"], death_signal=signal.SIGTERM),
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

        def wait_for_replica(model: str, seconds: float) -> bool:
            """A replica of the model that its agent probed with a real generation, and that answers."""
            from django.db import close_old_connections

            from serving import selectors

            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not supervisor.stopping.is_set():
                url = selectors.ready_replica_url(model)
                close_old_connections()
                if url and wait_for(f"{url}/health", 2):
                    return True
                time.sleep(0.5)
            return False

        def announce():
            if not wait_for(f"http://127.0.0.1:{port}/healthz", 120):
                return
            if not no_workers:
                # The banner says "ready" only once a completion can be served: the runtime answers
                # /health after its model is loaded.
                supervisor.say(
                    "run", "web is up; the pool starts the demo model's replica (a first start dequantizes it, ~20 s)"
                )
                if not wait_for_replica(DEMO_MODEL, 600):
                    supervisor.say("run", "no replica of the demo model serves: see the agent | lines above.")
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

    def retire_hand_registered_runtimes(self) -> None:
        """Earlier versions registered their runtime by hand; the pool runs it now."""
        from serving import services

        services.disable_backends(prefix="local-runtime-")
