"""Data-parallel training with torch.distributed: one process per device, launched by torchrun.

    torchrun --nproc-per-node 4 -m realmix.cli train --algorithm realmix --data cifar10.1@250-5000

Every process (rank) builds the same model from the same seed, draws its own share of each global batch,
runs the algorithm's step on it (interleave and batch-norm statistics per rank, as the original's per-GPU
towers) and averages its gradients with the other ranks before the identical Adam step, so the parameters
stay identical everywhere. Evaluation, logs, checkpoints and model.pt are rank 0's alone. The world is read
from torchrun's standard environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): NCCL on CUDA
(device cuda:LOCAL_RANK), gloo on CPU. `train.nproc` > 1 makes `realmix train` (and so the train stage)
relaunch itself under torchrun on this machine; for several machines run torchrun yourself.

Gradients are averaged with one all-reduce of a flat buffer after backward instead of DistributedDataParallel:
the MixMatch family runs several forwards per step (no-grad label guessing, three interleaved forwards of
which only the first updates BN statistics), VAT takes an extra gradient w.r.t. its input, and Mean Teacher and
ICT run a second (EMA) network; DDP's reducer is built for one forward and one backward per step.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .errors import RealmixError

__all__ = ["Dist", "all_gather_object", "average_gradients", "barrier", "broadcast_module", "broadcast_object",
           "current", "from_env", "launched", "mean_over_ranks", "process_group", "relaunch", "torchrun_argv"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the world (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that evaluates and writes logs, checkpoints and model.pt."""
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """The device of this rank: cuda:LOCAL_RANK when distributed on CUDA, else `device` unchanged."""
        if not self.enabled or device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise RealmixError(f"LOCAL_RANK={self.local_rank} but only {torch.cuda.device_count()} CUDA GPUs are "
                               "visible; start at most one process per GPU (torchrun --nproc-per-node)")
        return torch.device("cuda", self.local_rank)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise RealmixError(f"environment: {name}={value!r} must be an integer (set by torchrun)") from e


def from_env() -> Dist:
    """The world torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK (rank 0 of 1 when they are unset)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise RealmixError(f"environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} do not describe a "
                           "process of the world; launch with torchrun")
    return Dist(rank, world, local)


def current() -> Dist:
    """This process's place in the initialised process group (rank 0 of 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    rank = dist.get_rank()
    return Dist(rank, dist.get_world_size(), _env_int("LOCAL_RANK", rank))


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Dist]:
    """Join the process group described by the environment for the duration of the block (a no-op for a world
    of one, or when a group already exists): NCCL with this rank's GPU on CUDA, gloo on CPU."""
    d = from_env()
    if not d.enabled or dist.is_initialized():
        yield current() if dist.is_initialized() else d
        return
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RealmixError(f"environment: WORLD_SIZE={d.world_size} but {var} is unset; launch with torchrun")
    if device.type == "cuda":
        local = d.place(device)
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=local)
    else:
        dist.init_process_group("gloo")
    try:
        yield d
    finally:
        dist.destroy_process_group()


# -- collectives ---------------------------------------------------------------------------------------------
def _by_dtype(tensors: Sequence[Tensor]) -> list[list[Tensor]]:
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return list(groups.values())


@torch.no_grad()
def broadcast_module(*modules: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's modules (one broadcast per dtype)."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    for group in _by_dtype(tensors):
        flat = _flatten_dense_tensors([t.detach() for t in group])
        dist.broadcast(flat, src=0)
        torch._foreach_copy_(group, list(_unflatten_dense_tensors(flat, group)))


@torch.no_grad()
def average_gradients(params: Sequence[Tensor], loss: Tensor) -> Tensor:
    """Replace every gradient by its mean over the ranks (a missing gradient counts as zeros) and return the
    mean of `loss` over the ranks, in the same single all-reduce: a NaN on any rank shows on all of them."""
    world = dist.get_world_size()
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([_flatten_dense_tensors(grads), loss.detach().float().reshape(1)])
    dist.all_reduce(flat)
    flat.div_(world)
    torch._foreach_copy_(grads, list(_unflatten_dense_tensors(flat[:-1], grads)))
    return flat[-1]


def mean_over_ranks(values: dict[str, Tensor | float], device: torch.device) -> dict[str, float]:
    """The mean over the ranks of every value (the same keys on every rank), read back as floats."""
    keys = sorted(values)
    if not keys:
        return {}
    stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=device).reshape(())
                           for k in keys])
    dist.all_reduce(stacked)
    return dict(zip(keys, (stacked / dist.get_world_size()).tolist(), strict=True))


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` (picklable: e.g. a loaded checkpoint) on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    dist.barrier()


# -- launching ---------------------------------------------------------------------------------------------
def torchrun_argv(nproc: int, module_args: Sequence[str]) -> list[str]:
    """The argv (a list: never a shell string) that runs `python -m realmix.cli <module_args>` in `nproc`
    processes on this machine. `--standalone` picks a free rendezvous port, so several runs can share a host."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "realmix.cli", *module_args]


def relaunch(nproc: int, module_args: Sequence[str], device: torch.device) -> int:
    """Run `realmix <module_args>` in `nproc` local processes under torchrun; its exit status."""
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise RealmixError(f"params: train.nproc={nproc} but only {torch.cuda.device_count()} CUDA GPUs are "
                           "visible; use at most one process per GPU")
    env = dict(os.environ)
    if device.type == "cpu":  # share the cores (torchrun would set 1 thread per process and warn)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    print(f"launching {nproc} processes: {' '.join(torchrun_argv(nproc, module_args)[1:])}", file=sys.stderr,
          flush=True)
    return subprocess.run(torchrun_argv(nproc, module_args), env=env).returncode
