"""The pool's scheduler on paper at scale: a synthetic trace replayed through the policy code the
GPU workers run (platform/compute/policy.py: claim order, fit, quotas, reservations, preemption
victims), on 1,024 simulated accelerators.

Trace (seeded, so every policy sees the same one): 300 organizations whose job counts follow a
Zipf law (a few submit hundreds, in bursts of 10-50 at once; most submit a handful); fine-tunes of
1, 2, 4 or 8 accelerators needing 20, 40 or 70 GiB each, lasting a log-normal time (median 1.5 h,
at most 48 h); 120 dedicated endpoints whose replicas follow a daily load curve (peak 1-4 replicas,
a trough of a fifth of the peak, the peak hour differing by endpoint); node failures at
Llama 3's rate (one interruption per ~3 h per 16,384 accelerators), scaled to the pool, each node
back two hours later. Nodes: 128 of 8 accelerators (96 with 80 GiB, 32 with 40 GiB).

Policies compared:
- fifo: one queue in arrival order, the head blocks everything behind it (the platform before the
  pool), endpoints hold their peak replicas all day.
- fair: compute.policy's order and fit (fair share, no head-of-line blocking, reservations for
  long waiters), endpoints still hold their peak.
- fair+preempt+tidal: the same, and endpoints hold what their load needs each hour: what they do
  not need is lent to training, and taking it back preempts training (policy.preemption_victims)
  which checkpoints and requeues (a restart costs RESTART_SECONDS).
A node failure loses the work since a job's last periodic checkpoint (every 30 minutes) and costs a
restart.

Printed per policy: utilisation (accelerator-seconds doing useful work, training or serving load,
over the accelerator-seconds of nodes that are up, while jobs arrive), queue wait p50/p95 (first
start - submission) for all jobs and for small organizations (the half with the fewest jobs),
Jain's fairness index over organizations (of each one's mean run time / time in system), and
effective training time (productive training seconds over wall seconds from first start to the
end, accelerator-weighted).

Run: .venv/bin/python bench/pool_simulator.py   (BENCH_JOBS, BENCH_SEED to vary)
"""

from __future__ import annotations

import heapq
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform")]

from compute import policy  # noqa: E402  (Django-free by contract)

HOUR, DAY, GIB = 3600.0, 86400.0, 2**30
SEED = int(os.environ.get("BENCH_SEED", "7"))
JOBS = int(os.environ.get("BENCH_JOBS", "11000"))
ARRIVAL_DAYS = 4
ORGS = 300
NODES = [(f"n{i:03d}", 8, 80 * GIB if i < 96 else 40 * GIB) for i in range(128)]
ENDPOINTS = 120
CHECKPOINT_EVERY = 1800.0  # periodic checkpoints: what a node failure can lose
RESTART_SECONDS = 300.0  # loading the model (and the checkpoint) at every start
FAILURES_PER_ACCELERATOR_SECOND = 1 / (3 * HOUR * 16384)
REPAIR_SECONDS = 2 * HOUR
RESERVE_AFTER = 2 * HOUR


@dataclass
class Job:
    id: str
    org: int
    accelerators: int
    memory: int
    submit: float
    work: float  # seconds of training at its accelerators
    done: float = 0.0  # productive seconds so far
    checkpointed: float = 0.0
    first_start: float | None = None
    finish: float | None = None
    queued_at: float = 0.0
    run: int = 0  # bumps on every start, so a stale finish event is ignored
    node: str | None = None
    started: float = 0.0
    lent: bool = False


def trace(rng: random.Random):
    weights = [1 / (rank**1.1) for rank in range(1, ORGS + 1)]
    total = sum(weights)
    counts = [max(1, round(JOBS * w / total)) for w in weights]
    jobs: list[Job] = []
    for org, count in enumerate(counts):
        left = count
        while left:
            burst = min(left, rng.randint(10, 50) if count > 60 else rng.randint(1, 3))
            at = rng.uniform(0, ARRIVAL_DAYS * DAY)
            for _ in range(burst):
                accelerators = rng.choices([1, 2, 4, 8], [0.5, 0.2, 0.15, 0.15])[0]
                memory = rng.choices([20, 40, 70], [0.7, 0.2, 0.1])[0] * GIB
                work = min(48 * HOUR, 1.5 * HOUR * math.exp(rng.gauss(0, 1.2)))
                jobs.append(Job(f"j{len(jobs)}", org, accelerators, memory, at + rng.uniform(0, 60), work))
            left -= burst
    endpoints = [
        (rng.randrange(ORGS), rng.randint(1, 4), rng.uniform(0, 24)) for _ in range(ENDPOINTS)
    ]  # organization, peak replicas, peak hour
    failures, t = [], 0.0
    rate = FAILURES_PER_ACCELERATOR_SECOND * sum(n for _, n, _ in NODES)
    while t < ARRIVAL_DAYS * DAY * 3:
        t += rng.expovariate(rate)
        failures.append((t, rng.randrange(len(NODES))))
    return sorted(jobs, key=lambda j: j.submit), endpoints, failures


def demand(peak: int, peak_hour: float, at: float) -> int:
    hour = (at % DAY) / HOUR
    level = 0.6 + 0.4 * math.cos(2 * math.pi * (hour - peak_hour) / 24)  # 0.2 .. 1.0 of the peak
    return max(1, math.ceil(peak * level))


@dataclass
class Node:
    name: str
    total: int
    memory: int
    up: bool = True
    training: dict = field(default_factory=dict)  # job id -> accelerators
    serving: int = 0  # accelerators held by replicas

    @property
    def free(self) -> int:
        return self.total - self.serving - sum(self.training.values()) if self.up else 0


class Simulation:
    def __init__(self, name: str, seed: int):
        self.name = name
        self.fair = name != "fifo"
        self.tidal = name == "fair+preempt+tidal"
        self.jobs, self.endpoints, failures = trace(random.Random(seed))
        self.nodes = {n: Node(n, count, memory) for n, count, memory in NODES}
        self.by_id = {j.id: j for j in self.jobs}
        self.queue: dict[str, Job] = {}
        self.events: list = []
        self.seq = 0
        self.in_use: dict[int, int] = {}
        self.usage: dict[int, list] = {}  # org -> [(start, end, accelerators)] (windowed fair share)
        self.replicas: list[list[tuple[str, int]]] = [[] for _ in self.endpoints]  # per endpoint: (node, count)
        self.busy_seconds = 0.0
        self.up_seconds = 0.0
        self.clock = 0.0
        self.preemptions = 0
        for job in self.jobs:
            self.push(job.submit, "arrive", job.id)
        for at, index in failures:
            self.push(at, "fail", NODES[index][0])
        for hour in range(int(ARRIVAL_DAYS * 24 * 3)):
            self.push(hour * HOUR, "tick", None)

    def push(self, at: float, kind: str, payload) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, payload))

    # --- accounting -------------------------------------------------------------------------
    def advance(self, to: float) -> None:
        span = to - self.clock
        if span > 0 and self.clock < ARRIVAL_DAYS * DAY:
            span = min(to, ARRIVAL_DAYS * DAY) - self.clock
            up = sum(n.total for n in self.nodes.values() if n.up)
            useful_serving = sum(
                min(sum(c for _, c in held), demand(peak, hour, self.clock))
                for held, (_, peak, hour) in zip(self.replicas, self.endpoints, strict=True)
            )
            training = sum(sum(n.training.values()) for n in self.nodes.values())
            self.busy_seconds += (useful_serving + training) * span
            self.up_seconds += up * span
        self.clock = to

    def tenants(self, now: float) -> dict[int, policy.Tenant]:
        since = now - 24 * HOUR
        result = {}
        for org in {j.org for j in self.queue.values()}:
            intervals = [i for i in self.usage.get(org, []) if i[1] is None or i[1] > since]
            self.usage[org] = intervals
            seconds = sum(a * ((end if end is not None else now) - max(start, since)) for start, end, a in intervals)
            result[org] = policy.Tenant(in_use=self.in_use.get(org, 0), usage_seconds=seconds)
        return result

    # --- training -----------------------------------------------------------------------------
    def start(self, job: Job, node: Node, now: float) -> None:
        del self.queue[job.id]
        node.training[job.id] = job.accelerators
        job.node, job.started, job.run = node.name, now + RESTART_SECONDS, job.run + 1  # every start loads
        job.first_start = job.first_start if job.first_start is not None else now
        self.in_use[job.org] = self.in_use.get(job.org, 0) + job.accelerators
        self.usage.setdefault(job.org, []).append([now, None, job.accelerators])
        self.push(job.started + job.work - job.done, "finish", (job.id, job.run))

    def stop(self, job: Job, now: float, *, keep: bool) -> None:
        """The job leaves its node: finished, preempted (checkpoints now: keeps its work) or lost
        with its node (back to the last periodic checkpoint)."""
        node = self.nodes[job.node]
        del node.training[job.id]
        if now > job.started:
            job.done = min(job.work, job.done + now - job.started)
        if not keep:
            job.done = job.checkpointed + (job.done - job.checkpointed) // CHECKPOINT_EVERY * CHECKPOINT_EVERY
        job.checkpointed = job.done
        self.in_use[job.org] -= job.accelerators
        for interval in self.usage[job.org]:
            if interval[1] is None and interval[0] <= now:
                interval[1] = now
                break
        job.node, job.run = None, job.run + 1

    def requeue(self, job: Job, now: float) -> None:
        job.queued_at = job.queued_at or job.submit  # its place is kept
        self.queue[job.id] = job

    def schedule(self, now: float) -> None:
        if not self.queue:
            return
        if not self.fair:
            for job in sorted(self.queue.values(), key=lambda j: (j.submit, j.id)):
                fits = [n for n in self.nodes.values() if n.memory >= job.memory and n.free >= job.accelerators]
                if not fits:
                    return  # the head blocks the rest
                self.start(job, min(fits, key=lambda n: (n.free, n.name)), now)
            return
        while self.queue:
            requests = [
                policy.Request(j.id, j.org, j.accelerators, j.memory, j.queued_at or j.submit)
                for j in self.queue.values()
            ]
            free = [policy.NodeFree(n.name, n.free, n.total, n.memory, n.up) for n in self.nodes.values()]
            decision = policy.choose(
                requests, self.tenants(now), free, now=now, reserve_after=RESERVE_AFTER, explain=False
            )
            if decision.chosen is None:
                return
            self.start(self.queue[decision.chosen.id], self.nodes[decision.node], now)

    # --- serving ------------------------------------------------------------------------------
    def scale(self, now: float) -> None:
        for index, (org, peak, hour) in enumerate(self.endpoints):
            want = demand(peak, hour, now) if self.tidal else peak
            held = self.replicas[index]
            have = sum(c for _, c in held)
            while have > want:  # give back what the load does not need (lent to training)
                name, count = held.pop()
                self.nodes[name].serving -= count
                have -= count
            while have < want and self._place_replica(index, org, now):
                have += 1

    def _place_replica(self, index: int, org: int, now: float) -> bool:
        nodes = [n for n in self.nodes.values() if n.up]
        free = [n for n in nodes if n.free >= 1]
        if free:  # the tightest fit: whole nodes stay whole for 8-accelerator jobs
            node = min(free, key=lambda n: (n.free, n.name))
        elif self.tidal:
            candidates = [n for n in nodes if n.training and n.total - n.serving >= 1]
            if not candidates:
                return False
            node = min(candidates, key=lambda n: (sum(n.training.values()), n.name))
            runs = [policy.Running(j, self.by_id[j].org, a, self.by_id[j].started) for j, a in node.training.items()]
            for victim in policy.preemption_victims(runs, 1, {}) or []:
                job = self.by_id[victim.id]
                self.stop(job, now, keep=True)
                self.requeue(job, now)
                self.preemptions += 1
        else:
            return False
        node.serving += 1
        self.replicas[index].append((node.name, 1))
        return True

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        while self.events:
            at, _, kind, payload = heapq.heappop(self.events)
            if kind == "tick" and not self.queue and all(j.finish for j in self.jobs) and at > ARRIVAL_DAYS * DAY:
                break
            self.advance(at)
            if kind == "arrive":
                self.requeue(self.by_id[payload], at)
            elif kind == "finish":
                job_id, run = payload
                job = self.by_id[job_id]
                if job.run != run or job.node is None:
                    continue  # preempted or lost meanwhile
                self.stop(job, at, keep=True)
                job.done, job.finish = job.work, at
            elif kind == "fail":
                node = self.nodes[payload]
                if node.up:
                    for job_id in list(node.training):
                        job = self.by_id[job_id]
                        self.stop(job, at, keep=False)
                        self.requeue(job, at)
                    node.up = False
                    for held in self.replicas:
                        held[:] = [(n, c) for n, c in held if n != node.name]
                    node.serving = 0
                    self.push(at + REPAIR_SECONDS, "repair", node.name)
            elif kind == "repair":
                self.nodes[payload].up = True
            if kind in ("tick", "fail", "repair"):
                self.scale(at)
            self.schedule(at)
        return self.figures()

    def figures(self) -> dict:
        done = [j for j in self.jobs if j.finish is not None]
        waits = [j.first_start - j.submit for j in done]
        per_org: dict[int, list[Job]] = {}
        for job in done:
            per_org.setdefault(job.org, []).append(job)
        small = sorted(per_org, key=lambda o: len(per_org[o]))[: len(per_org) // 2]
        small_waits = [j.first_start - j.submit for o in small for j in per_org[o]]
        service = [statistics.mean(j.work / (j.finish - j.submit) for j in jobs) for jobs in per_org.values()]
        productive = sum(j.work * j.accelerators for j in done)
        wall = sum((j.finish - j.first_start) * j.accelerators for j in done)
        return {
            "policy": self.name,
            "jobs_done": len(done),
            "utilisation": self.busy_seconds / self.up_seconds,
            "wait_p50_h": _percentile(waits, 0.5) / HOUR,
            "wait_p95_h": _percentile(waits, 0.95) / HOUR,
            "small_orgs_wait_p95_h": _percentile(small_waits, 0.95) / HOUR,
            "jain": policy.jain_index(service),
            "effective_training_time": productive / wall,
            "preemptions": self.preemptions,
            "makespan_days": max(j.finish for j in done) / DAY,
        }


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] if ordered else 0.0


def main() -> None:
    rows = []
    for name in ("fifo", "fair", "fair+preempt+tidal"):
        began = time.perf_counter()
        figures = Simulation(name, SEED).run()
        figures["simulated_in_s"] = round(time.perf_counter() - began, 1)
        rows.append(figures)
        print(json.dumps(figures), flush=True)
    jobs, endpoints, failures = trace(random.Random(SEED))
    print(
        f"\n{sum(n for _, n, _ in NODES)} accelerators on {len(NODES)} nodes, {ORGS} organizations, {len(jobs)} jobs, "
        f"{len(endpoints)} dedicated endpoints, {sum(1 for t, _ in failures if t < ARRIVAL_DAYS * DAY)} node "
        f"failures while jobs arrive ({ARRIVAL_DAYS} days), seed {SEED}\n"
    )
    columns = ["utilisation", "wait p50", "wait p95", "small orgs' wait p95", "Jain's index", "effective training time"]
    print("| policy | " + " | ".join(columns) + " | preemptions |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['policy']} | {r['utilisation']:.1%} | {r['wait_p50_h']:.2f} h | {r['wait_p95_h']:.1f} h | "
            f"{r['small_orgs_wait_p95_h']:.1f} h | {r['jain']:.3f} | {r['effective_training_time']:.1%} | "
            f"{r['preemptions']} |"
        )
    out = ROOT / "bench" / "results" / "pool_simulator.json"
    out.write_text(json.dumps({"seed": SEED, "jobs": len(jobs), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
