"""A soak with faults, so that "nothing lost" is a figure.

Starts the whole platform as `make run` does (`manage.py run`: web, workers, beat, the demo
model's runtime) on the database and Redis of the environment, then for a set time drives mixed
traffic from several organizations and keys — plain and streamed calls, clients that hang up early
or read slowly, organizations on tight prepaid budgets, uploads and fine-tuning jobs — while it
SIGKILLs the web process, the workers, beat, the node agent and the demo model's engine, and
restarts PostgreSQL and Redis, at random moments. Then, with every fault over and the books drained, it checks:

- every call the clients saw answered has exactly one ledger row, with the tokens the model server
  reported in the answer (lost rows, duplicates, token mismatches);
- no prepaid credit went below zero and no monthly limit was passed (overspend);
- every fine-tuning job that ended has one ledger row, its tokens billed once;

and prints the counts as JSON (bench/results/soak.json too). Target: 0 lost, 0 overspent.

Run: DATABASE_URL=postgres://… REDIS_URL=redis://… .venv/bin/python bench/soak.py --seconds 600
(`--faults` picks the kinds; restarting PostgreSQL and Redis needs the machine's service commands,
as root). tests/maas/test_soak.py runs a short version.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
PROGRAMS = {  # what identifies each of `manage.py run`'s processes in its command line
    "web": "uvicorn",
    "worker": "-Q default",
    "gpu": "-Q gpu",
    "beat": " beat ",
    "agent": "node_agent",
    "runtime": "serving.runtime",
}
SERVICE_FAULTS = ("postgres", "redis")
PROMPTS = ["Say hi.", "Name a colour.", "Count to five.", "What is the capital of France?"]
TRAINING = [
    {"messages": [{"role": "user", "content": f"What is {a} plus {a}?"}, {"role": "assistant", "content": str(2 * a)}]}
    for a in range(1, 13)
]


@dataclass
class Tally:
    answered: dict[str, tuple[int, int]] = field(default_factory=dict)  # request id -> (prompt, completion)
    unanswered: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    jobs: list[str] = field(default_factory=list)
    uploads: int = 0

    def status(self, code) -> None:
        self.statuses[str(code)] = self.statuses.get(str(code), 0) + 1


# --- The platform ----------------------------------------------------------------------------


class Platform:
    def __init__(self, var_dir: Path, port: int, env: dict):
        self.var_dir, self.port = var_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **env,
            "VAR_DIR": str(var_dir),
            "PORT": str(port),
            "ACCESS_LOG": "0",
            "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}",
            # Short enough to see within a soak: a killed web process's holds come back in a minute.
            "BILLING_RESERVATION_TTL_SECONDS": env.get("BILLING_RESERVATION_TTL_SECONDS", "60"),
        }
        self.log_path = var_dir / "run.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "run"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 900
        while "Ready: the console" not in self.log_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the platform did not start:\n{self.log_path.read_text()[-4000:]}")
            time.sleep(1)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def pid_of(self, program: str) -> int | None:
        """The main process of one of the supervisor's programs (its direct child), or for the
        runtime, the demo model's engine (which the node agent started)."""
        scope = ["-e"] if program == "runtime" else ["--ppid", str(self.process.pid)]
        out = subprocess.run(["ps", "-o", "pid=,args=", *scope], capture_output=True, text=True).stdout
        if program == "runtime":
            out = "\n".join(line for line in out.splitlines() if str(self.var_dir) in line)
        for line in out.splitlines():
            pid, _, args = line.strip().partition(" ")
            if PROGRAMS[program] in f" {args} ":
                return int(pid)
        return None

    def healthy(self, timeout: float = 300) -> None:
        """Web answers and the demo model completes: the platform is back after the faults."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError("the platform did not come back")


def restart_postgres() -> None:
    cluster = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart"], check=True)


def restart_redis() -> None:
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"], capture_output=True)
    time.sleep(1)
    subprocess.run(
        [
            "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
            "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
        ],
        check=True,
    )  # fmt: skip


# --- Tenants (through the services, in this process) ------------------------------------------


def setup_tenants(organizations: int, tight: int) -> list[dict]:
    """Organizations with two keys each; the first `tight` on a prepaid credit a few dozen calls
    use up, one of them also with a monthly limit."""
    import django

    django.setup()
    from billing import budgets, money
    from billing import services as billing
    from billing.models import Account
    from tenancy import services
    from tenancy.audit import Actor

    made = []
    stamp = int(time.time())
    for n in range(organizations):
        user, org = services.sign_up(
            email=f"soak{n}-{stamp}@soak.test",
            password=secrets.token_urlsafe(16),
            organization_name=f"soak {n} {stamp}",
            actor=Actor(),
        )
        services.mark_email_verified(user.pk)
        issued = [
            services.create_api_key(organization_id=org.pk, name=f"k{k}", created_by_id=user.pk, actor=Actor(user=user))
            for k in range(2)
        ]
        keys = [key.plaintext for key in issued]
        for key in issued:
            services.set_key_limits(key.key.pk, organization_id=org.pk, rpm=100_000, tpm=100_000_000, actor=Actor())
        budgets.ensure_account(org.pk)
        if n < tight:
            Account.all_orgs.filter(organization=org).update(credit=money.from_decimal("0.002"))
            if n == 0:
                billing.configure_account(org.pk, monthly_limit="0.0015", actor=Actor())
        else:
            billing.grant_credits(org.pk, "100", reason="soak", actor=Actor())
        made.append({"id": org.pk, "slug": org.slug, "keys": keys, "tight": n < tight})
    return made


# --- Traffic ---------------------------------------------------------------------------------


async def one_call(client: httpx.AsyncClient, url: str, key: str, tally: Tally, rng: random.Random) -> None:
    kind = rng.choice(["plain", "plain", "stream", "stream", "hang_up", "slow_reader"])
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": rng.choice([8, 16, 32]),
        "temperature": 0,
    }
    headers = {"Authorization": f"Bearer {key}"}
    try:
        if kind == "plain":
            response = await client.post(url + "/v1/chat/completions", json=body, headers=headers)
            tally.status(response.status_code)
            if response.status_code == 200:
                usage = response.json()["usage"]
                tally.answered[response.headers["x-request-id"]] = (usage["prompt_tokens"], usage["completion_tokens"])
            return
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as response:
            tally.status(response.status_code)
            request_id = response.headers.get("x-request-id", "")
            if response.status_code != 200:
                return
            usage, done, lines = None, False, 0
            async for line in response.aiter_lines():
                lines += 1
                if kind == "hang_up" and lines >= 3:
                    tally.unanswered.append(request_id)
                    return  # leaving the block closes the connection
                if kind == "slow_reader":
                    await asyncio.sleep(0.05)
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {"):
                    event = json.loads(line[6:])
                    usage = event.get("usage") or usage
            if done and usage:
                tally.answered[request_id] = (usage["prompt_tokens"], usage["completion_tokens"])
            else:
                tally.unanswered.append(request_id)
    except (httpx.HTTPError, KeyError, ValueError):
        tally.status("error")


async def client_loop(url: str, tenants: list[dict], tally: Tally, until: float, seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=5)) as client:
        while time.monotonic() < until:
            tenant = rng.choice(tenants)
            await one_call(client, url, rng.choice(tenant["keys"]), tally, rng)
            await asyncio.sleep(rng.uniform(0, 0.2))


async def fine_tuning_loop(url: str, tenants: list[dict], tally: Tally, until: float, jobs: int) -> None:
    """Upload a file and start a fine-tune ("auto" everything) now and then."""
    data = ("\n".join(json.dumps(x) for x in TRAINING) + "\n").encode()
    rich = [t for t in tenants if not t["tight"]]
    async with httpx.AsyncClient(timeout=60) as client:
        for n in range(jobs):
            if time.monotonic() > until:
                return
            tenant = rich[n % len(rich)]
            headers = {"Authorization": f"Bearer {tenant['keys'][0]}"}
            try:
                uploaded = await client.post(
                    url + "/v1/files", headers=headers, data={"purpose": "fine-tune"},
                    files={"file": (f"soak-{n}.jsonl", data, "application/jsonl")},
                )  # fmt: skip
                tally.uploads += uploaded.status_code == 200
                file_id = uploaded.json()["id"]
                for _ in range(60):  # validated by a worker
                    status = (await client.get(url + f"/v1/files/{file_id}", headers=headers)).json().get("status")
                    if status == "processed":
                        break
                    await asyncio.sleep(1)
                job = await client.post(
                    url + "/v1/fine_tuning/jobs", headers=headers, json={"model": MODEL, "training_file": file_id}
                )
                if job.status_code == 200:
                    tally.jobs.append(job.json()["id"])
            except (httpx.HTTPError, KeyError, ValueError):
                tally.status("error")
            await asyncio.sleep(5)


async def fault_loop(platform: Platform, faults: list[str], tally: Tally, until: float, every: float, seed: int):
    rng = random.Random(seed)
    await asyncio.sleep(every)
    while time.monotonic() < until - every:
        fault = rng.choice(faults)
        try:
            if fault == "postgres":
                await asyncio.to_thread(restart_postgres)
            elif fault == "redis":
                await asyncio.to_thread(restart_redis)
            else:
                pid = platform.pid_of(fault)
                if pid is None:
                    continue  # it is being restarted
                os.kill(pid, signal.SIGKILL)
            tally.faults[fault] = tally.faults.get(fault, 0) + 1
        except (OSError, subprocess.CalledProcessError) as error:
            print(f"fault {fault} could not be injected: {error}", file=sys.stderr)
        await asyncio.sleep(rng.uniform(every * 0.5, every * 1.5))


# --- The checks ------------------------------------------------------------------------------


def retrying(function, *args):
    """This process's own database reads, again after PostgreSQL restarted under its connections."""
    from django.db import DatabaseError, connections

    for attempt in range(30):
        try:
            return function(*args)
        except DatabaseError:
            if attempt == 29:
                raise
            connections.close_all()
            time.sleep(1)
    raise AssertionError("unreachable")


def settle(platform: Platform, tally: Tally, tenants: list[dict], wait_seconds: float) -> None:
    """After the faults: the platform back, every job ended, the outboxes drained."""
    from django.db import close_old_connections

    from fine_tuning.models import FineTuningJob

    platform.healthy()
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        close_old_connections()
        live = FineTuningJob.all_orgs.filter(pk__in=tally.jobs).exclude(status__in=["succeeded", "failed", "cancelled"])
        spooled = [p for p in (platform.var_dir / "metering").glob("*.jsonl") if p.stat().st_size]
        if not live.exists() and not spooled:
            break
        time.sleep(2)
    time.sleep(3)  # the last drains and settles


def check(tally: Tally, tenants: list[dict]) -> dict:
    from django.db import close_old_connections
    from django.db.models import Count

    from billing.models import Account, UsageEvent
    from fine_tuning.models import FineTuningJob

    close_old_connections()
    rows = {
        r["request_id"]: r
        for r in UsageEvent.all_orgs.filter(request_id__in=list(tally.answered)).values(
            "request_id", "prompt_tokens", "completion_tokens"
        )
    }
    lost = [rid for rid in tally.answered if rid not in rows]
    mismatched = [
        rid
        for rid, (prompt, completion) in tally.answered.items()
        if rid in rows and (rows[rid]["prompt_tokens"], rows[rid]["completion_tokens"]) != (prompt, completion)
    ]
    org_ids = [t["id"] for t in tenants]
    duplicates = (
        UsageEvent.all_orgs.filter(organization_id__in=org_ids)
        .values("request_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    overspent = []
    for account in Account.all_orgs.filter(organization_id__in=org_ids):
        if account.mode == Account.Mode.PREPAID and account.credit < 0:
            overspent.append({"organization": account.organization_id, "credit": account.credit})
        if account.monthly_limit is not None and account.period_spent > account.monthly_limit:
            overspent.append({"organization": account.organization_id, "spent": account.period_spent})
    ended = FineTuningJob.all_orgs.filter(pk__in=tally.jobs, status__in=["succeeded", "failed", "cancelled"])
    job_rows = {
        r["request_id"]: r["n"]
        for r in UsageEvent.all_orgs.filter(request_id__in=[f"train:{j}" for j in tally.jobs])
        .values("request_id")
        .annotate(n=Count("id"))
    }
    jobs_unbilled = [j.pk for j in ended if job_rows.get(f"train:{j.pk}") != 1]
    return {
        "requests": sum(v for k, v in tally.statuses.items()),
        "statuses": tally.statuses,
        "answered": len(tally.answered),
        "left_early_or_broken": len(tally.unanswered),
        "faults_injected": tally.faults,
        "uploads": tally.uploads,
        "jobs": {"started": len(tally.jobs), "ended": ended.count(), "not_billed_once": len(jobs_unbilled)},
        "rows_lost": len(lost),
        "duplicate_rows": duplicates,
        "token_mismatches": len(mismatched),
        "overspent": len(overspent),
        "overspent_detail": overspent,
        "lost_sample": lost[:5],
        "mismatch_sample": [(rid, tally.answered[rid], rows[rid]) for rid in mismatched[:5]],
    }


def run(
    *, seconds: float, faults: list[str], every: float, clients: int, jobs: int, seed: int, var_dir: Path, port: int
) -> dict:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per call is noise here
    env = dict(os.environ)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maas.settings")
    os.environ.setdefault("VAR_DIR", str(var_dir))  # this process reads the same database (SQLite too)
    for path in (str(ROOT), str(ROOT / "platform")):
        if path not in sys.path:
            sys.path.insert(0, path)
    platform = Platform(var_dir, port, env)
    platform.start()
    try:
        tenants = setup_tenants(organizations=4, tight=2)
        tally = Tally()

        async def drive() -> None:
            until = time.monotonic() + seconds
            tasks = [client_loop(platform.url, tenants, tally, until, seed + n) for n in range(clients)]
            tasks.append(fine_tuning_loop(platform.url, tenants, tally, until, jobs))
            if faults:
                tasks.append(fault_loop(platform, faults, tally, until, every, seed))
            await asyncio.gather(*tasks)

        asyncio.run(drive())
        retrying(settle, platform, tally, tenants, 600)
        return retrying(check, tally, tenants)
    finally:
        platform.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--faults", default="web,worker,gpu,beat,runtime,postgres,redis")
    parser.add_argument("--every", type=float, default=20, help="seconds between faults, on average")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=8600)
    parser.add_argument("--var-dir", default=str(ROOT / "var" / "soak"))
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(PROGRAMS) - set(SERVICE_FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    figures = run(
        seconds=args.seconds,
        faults=faults,
        every=args.every,
        clients=args.clients,
        jobs=args.jobs,
        seed=args.seed,
        var_dir=Path(args.var_dir),
        port=args.port,
    )
    print(json.dumps(figures, indent=2))
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "soak.json").write_text(json.dumps(figures, indent=2) + "\n")
    sys.exit(0 if not (figures["rows_lost"] or figures["overspent"] or figures["duplicate_rows"]) else 1)


if __name__ == "__main__":
    main()
