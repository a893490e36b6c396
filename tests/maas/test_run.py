"""`manage.py run` (what `make run` starts) on its default port: every process comes up, the
pool starts the demo model's replica (nobody registers a runtime), the banner says ready only when
a completion can be served, the console answers, the printed logins work, the README's shell and
Python examples run literally, SIGINT (Ctrl-C) stops every process, and a supervisor killed
outright takes every process with it — engines and the GPU worker included."""

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


def readme_block(after: str, language: str) -> str:
    """The first ```language block of the README after the line that contains `after`."""
    text = (REPO / "README.md").read_text()
    start = text.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    return match.group(1)


def start_run(var_dir: Path, port: int | None = None) -> tuple[subprocess.Popen, dict]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PORT", "HOST"}
    }
    from django.conf import settings

    env.update(VAR_DIR=str(var_dir), MODEL_CACHE_DIR=str(settings.MODEL_CACHE_DIR))  # reuse the dequantized model
    if port is not None:
        env["PORT"] = str(port)
    log = (var_dir / "run.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, env


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def call_before_ready(port: int, env: dict) -> httpx.Response:
    key = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", "demo", "--name", "early"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[-1]
    return httpx.post(
        f"http://localhost:{port}/v1/chat/completions",
        json={"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


@pytest.mark.slow
def test_run_starts_everything_and_ctrl_c_stops_everything(tmp_path):
    port = 8000  # the README's examples name it
    assert port_is_free(port), "make run's default port 8000 is taken"
    process, env = start_run(tmp_path)
    try:
        deadline = time.monotonic() + 180
        text = ""

        def everything_up(text: str) -> bool:
            ready = ("Stop:         Ctrl-C", "worker | ", "gpu | ", "beat | ", "web | ")
            return all(mark in text for mark in ready) and text.count(" ready.") >= 2  # both Celery workers

        early = None
        while not everything_up(text):
            if early is None and "starts the demo model's replica" in text and "Ready:" not in text:
                early = call_before_ready(port, env)  # waits for the replica coming up
            assert time.monotonic() < deadline, text[-3000:]
            assert process.poll() is None, text[-3000:]
            time.sleep(0.5)
            text = (tmp_path / "run.log").read_text()
        if early is not None and early.status_code != 200:  # the replica took longer than a call waits
            assert early.status_code == 503 and early.headers["retry-after"], early.text
            assert early.json()["error"]["code"] == "model_unavailable"
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

        # The README's examples, literally, right after the banner: no retry, no 503.
        # hello.py, then the embeddings lines that follow it (the embedding model starts on that call).
        hello = readme_block("Any OpenAI client works unchanged", "python")
        hello += readme_block("The catalog also has an embedding model", "python")
        (tmp_path / "hello.py").write_text(hello)
        script = readme_block("Then, in another shell", "sh") + f"\n.venv/bin/python {tmp_path / 'hello.py'}\n"
        shell = ["bash", "-e", "-o", "pipefail", "-c", script]
        done = subprocess.run(shell, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        printed = done.stdout.replace(" ", "")  # curl's two answers, then what hello.py printed
        assert printed.startswith('{"object":"list","data":[{"id":"all-minilm-l6-v2"'), done.stdout
        assert '{"id":"smollm2-135m-instruct"' in printed, done.stdout
        assert '"object":"chat.completion"' in printed and '"finish_reason":' in printed, done.stdout
        assert "Paris" in done.stdout.splitlines()[-2], done.stdout
        assert done.stdout.splitlines()[-1] == "[384, 384, 384] 9", done.stdout
        assert " ERROR " not in (tmp_path / "run.log").read_text()
        engine_port = int(re.search(r"agent \| .*engine started \(pid \d+, port (\d+)\)", text).group(1))
        assert httpx.get(f"http://127.0.0.1:{engine_port}/v1/models", timeout=10).status_code == 401  # secret set
        spawned = children_of(process.pid)
        assert len(spawned) >= 6  # web, two workers, beat, the agent and its engine (and their children)
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        process.wait(60)
    time.sleep(0.5)
    assert [pid for pid in spawned if alive(pid)] == []
    assert "all processes stopped." in (tmp_path / "run.log").read_text()


@pytest.mark.slow
def test_a_killed_supervisor_takes_every_process_with_it(tmp_path):
    """SIGKILL (an OOM kill) gives the supervisor no chance to stop anything: its children must
    still go — the GPU worker at once rather than after its training, the agent with its engines."""
    process, _ = start_run(tmp_path, port=free_port())
    try:
        deadline = time.monotonic() + 180
        while "Ready:" not in (text := (tmp_path / "run.log").read_text()):
            assert time.monotonic() < deadline and process.poll() is None, text[-3000:]
            time.sleep(0.5)
        spawned = children_of(process.pid)
        engine = int(re.search(r"engine started \(pid (\d+)", text).group(1))
        assert engine in spawned
    finally:
        process.kill()
        process.wait(10)
    deadline = time.monotonic() + 20
    while [pid for pid in spawned if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [pid for pid in spawned if alive(pid)] == []
