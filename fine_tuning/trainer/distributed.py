"""Data-parallel training with torch.distributed, when the trainer is started by torchrun (a job
that asked for several accelerators of one node): gloo on CPUs, nccl on GPUs. Each process takes
every world-size-th example of each step; gradients are averaged by DistributedDataParallel, and
each process scales its loss so that the average is exactly the gradient of the whole step's mean
token loss, as one process would compute it. Only the first process reports, checkpoints and
saves the adapter. Started alone, the trainer is a world of one and nothing here costs anything."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field, fields

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the processes (float64, so token counts stay exact)."""
        if self.size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on one (a stop asked of one stops all at one step)."""
        return self.sum(1.0 if flag else 0.0)[0] > 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def wrap(self, model):
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def to_device(self, batch):
        if self.device.type == "cpu":
            return batch
        moved = {f.name: getattr(batch, f.name) for f in fields(batch)}
        return type(batch)(**{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in moved.items()})

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def die_with_launcher() -> None:
    """torchrun starts its workers in sessions of their own, so nothing that kills torchrun (its
    node agent or GPU worker dying, a SIGKILL to its process group) reaches them: each worker asks
    the kernel to kill it when its launcher dies (Linux PR_SET_PDEATHSIG), and leaves at once if it
    is gone already. A trainer started directly is its supervisor's child and needs none of this."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    launcher = os.getppid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != launcher:  # it died before the request took effect
        os._exit(1)


def join() -> World:
    """This process's place in the job: from torchrun's environment, or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if size == 1:
        return World(device=torch.device("cuda", 0) if cuda else torch.device("cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return World(rank=rank, size=size, device=torch.device("cuda", local) if cuda else torch.device("cpu"))


def shard(members: list[int], world: World) -> tuple[list[int], bool]:
    """This process's examples of a step, and whether it has any. A process left without one (a
    step of fewer examples than processes) repeats the step's first with no weight, so that every
    process still takes part in the gradient exchange."""
    mine = members[world.rank :: world.size]
    return (mine, True) if mine else (members[:1], False)
