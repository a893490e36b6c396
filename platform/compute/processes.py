"""How the platform starts its own processes, defined once: the Celery worker command line (used
by `manage.py run`, the tests and the benchmarks; platform/deploy/Procfile spells the same), the
trainer's, and tying a child's life to its parent's."""

from __future__ import annotations

import signal
import sys


def celery_worker(
    queues: list[str],
    *,
    name: str,
    loglevel: str = "INFO",
    concurrency: int = 1,
    pool: str | None = None,
    one_task_at_a_time: bool = False,
) -> list[str]:
    """The argv of a Celery worker. GPU workers take one task at a time (prefetch 1, concurrency 1):
    a second job must wait in the broker, where another worker can take it."""
    argv = [sys.executable, "-m", "celery", "-A", "maas", "worker", "-Q", ",".join(queues)]
    argv += ["-c", str(concurrency), "-n", name, "-l", loglevel]
    if one_task_at_a_time:
        argv += ["--prefetch-multiplier", "1"]
    if pool:
        argv += ["--pool", pool]
    return argv


def trainer(processes: int = 1) -> list[str]:
    """The argv prefix of a trainer (`python -m fine_tuning.trainer`); for a data-parallel job,
    torchrun starting one trainer per accelerator on this node (the arguments follow)."""
    if processes == 1:
        return [sys.executable, "-m", "fine_tuning.trainer"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [*launcher, "-m", "fine_tuning.trainer"]


def trainer_across(processes: int, *, nodes: int, rank: int, master: str, port: int) -> list[str]:
    """The argv prefix of one node's part of a job across `nodes` nodes: torchrun with a static
    rendezvous at the leading node (rank 0, where the first process reports and checkpoints),
    `processes` trainers on this node."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--node-rank={rank}"]
    launcher += [f"--nproc-per-node={processes}", f"--master-addr={master}", f"--master-port={port}"]
    return [*launcher, "-m", "fine_tuning.trainer"]


def die_with_parent(sig: int = signal.SIGKILL):
    """A Popen preexec_fn: the kernel sends the child `sig` when its parent dies without cleaning
    up (Linux PR_SET_PDEATHSIG; a no-op elsewhere)."""

    def arm() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)
        except OSError:
            pass

    return arm
