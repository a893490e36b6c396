"""`manage.py run` (what `make run` starts): every process comes up, the console answers, the
printed logins work, and SIGINT (Ctrl-C) stops every process."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
        for child in map(int, out.split()):
            found.add(child)
            frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


@pytest.mark.slow
def test_run_starts_everything_and_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}}
    from django.conf import settings

    env.update(
        VAR_DIR=str(tmp_path),
        PORT=str(port),
        RUNTIME_PORT=str(free_port()),
        MODEL_CACHE_DIR=str(settings.MODEL_CACHE_DIR),
    )  # reuse the dequantized demo model
    log = (tmp_path / "run.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        text = ""

        def everything_up(text: str) -> bool:
            ready = ("Stop:         Ctrl-C", "worker | ", "gpu | ", "beat | ", "web | ")
            return all(mark in text for mark in ready) and text.count(" ready.") >= 2  # both Celery workers

        while not everything_up(text):
            assert time.monotonic() < deadline, text[-3000:]
            assert process.poll() is None, text[-3000:]
            time.sleep(0.5)
            text = (tmp_path / "run.log").read_text()
        console = re.search(r"Console:\s+(\S+)", text).group(1)
        assert console == f"http://localhost:{port}/"
        page = httpx.get(console + "sign-in/", timeout=10)
        assert page.status_code == 200 and 'name="password"' in page.text
        email, password = re.search(r"Login:\s+(owner@example.com) / (\S+)", text).groups()
        session = httpx.Client(base_url=console, timeout=10)
        form = session.get("sign-in/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        signed_in = session.post(
            "sign-in/",
            data={"username": email, "password": password, "csrfmiddlewaretoken": token},
            headers={"Referer": console},
        )
        assert signed_in.status_code == 302 and signed_in.headers["location"] == "/"

        # The whole inference path of `make run`: a key from the operations command, the gateway,
        # the registered runtime serving the demo model.
        key = (
            subprocess.run(
                [sys.executable, "manage.py", "create_api_key", "demo", "--name", "e2e"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        body = {
            "model": "smollm2-135m-instruct",
            "temperature": 0,
            "max_tokens": 12,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        }
        answer = None
        while answer is None or answer.status_code == 503:  # the runtime may still be loading the model
            assert time.monotonic() < deadline, text[-3000:]
            answer = httpx.post(
                console + "v1/chat/completions", json=body, timeout=60, headers={"Authorization": f"Bearer {key}"}
            )
            time.sleep(0.5)
        assert answer.status_code == 200, answer.text
        assert "Paris" in answer.json()["choices"][0]["message"]["content"]
        runtime_port = env["RUNTIME_PORT"]
        assert httpx.get(f"http://127.0.0.1:{runtime_port}/v1/models", timeout=10).status_code == 401  # secret set
        spawned = children_of(process.pid)
        assert len(spawned) >= 4
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        process.wait(60)
    time.sleep(0.5)
    assert [pid for pid in spawned if alive(pid)] == []
    assert "all processes stopped." in (tmp_path / "run.log").read_text()
