"""Data-parallel training across processes and machines, on PyTorch's own engine (torch.distributed).

A run is distributed when `torchrun` started it (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR in
the environment) or when `compress --nproc N` starts N workers itself (`launch`: torch's elastic
launcher, c10d rendezvous on the loopback interface at a free port). Every rank runs the same
pipeline on the same data; the training loop (compressor.distill.epochs) shards each global batch
across the ranks and averages gradients with DistributedDataParallel. Collectives of CPU tensors go
over gloo, those of CUDA tensors over NCCL. Rank 0 alone writes the run directory; a checkpoint it
wrote reaches the other ranks by broadcast, so only rank 0 needs to see the run directory on resume.
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import CompressError, Interrupted, VerificationError

T = TypeVar("T")
# More workers than this per core, or in all on one machine, is a typo, not a plan: refused
MAX_PER_CORE = 4
ONE_MACHINE_MAX = 256
_THREADS_ALONE: list[int] = []  # the thread count before joining, restored on leaving
EXIT_CODES = {cls.__name__: cls.exit_code for cls in (CompressError, VerificationError, Interrupted)}


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (any picklable object; tensors included)."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """`fn()` run on rank 0 only, its result given to every rank: for what must not run on every
        rank at once (a latency measurement) or must be decided once (an epoch's validation score)."""
        return self.broadcast(fn() if self.is_main else None)

    def sum(self, values: list[float]) -> list[float]:
        if not self.distributed or not values:
            return values
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()


def current() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                 int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def join_from_environment() -> World:
    """Join the process group torchrun (or `launch`) described in the environment; a process
    started on its own is a world of one. Each rank gets its share of the machine's cores."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return current()
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    # the ranks on a machine share its cores (torchrun's OMP_NUM_THREADS=1 would leave most idle)
    _THREADS_ALONE.append(torch.get_num_threads())
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_size))
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend)
    return current()


def leave() -> None:
    """End the process group (every rank calls it); rank 0 goes on alone with all its threads."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        if _THREADS_ALONE:
            torch.set_num_threads(_THREADS_ALONE.pop())


class _Step(nn.Module):
    """Holds the trained modules so DistributedDataParallel sees their parameters; its forward runs
    the caller's loss, so any loss closure (a student, gates and multipliers, a supernet's sampled
    subnets) runs inside DDP's forward and its gradients are averaged in backward."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.held = nn.ModuleList(modules)

    def forward(self, loss: Callable[..., Any], *args):
        return loss(*args)


class DataParallel:
    """`parallel(loss, *args)`: `loss(*args)`, under DistributedDataParallel when the world has
    several ranks (the same call otherwise). DDP starts every rank from rank 0's parameters."""

    def __init__(self, modules: list[nn.Module], world: World):
        self.world = world
        self.ddp = None
        if world.distributed:
            step = _Step(modules)
            on_gpu = next((p.is_cuda for p in step.parameters()), False)
            # static_graph: every step uses the same parameters, though not all of them (the scale
            # of a quantizer left off in a layer kept in float gets no gradient, ever)
            self.ddp = nn.parallel.DistributedDataParallel(step, device_ids=[torch.cuda.current_device()] if on_gpu else None,
                                                           static_graph=True)

    def __call__(self, loss: Callable[..., Any], *args):
        return self.ddp(loss, *args) if self.ddp is not None else loss(*args)


def _worker(fn: Callable[..., T], args: tuple) -> T:
    join_from_environment()
    try:
        return fn(*args)
    finally:
        leave()


def launch(nproc: int, fn: Callable[..., T], args: tuple) -> T:
    """Run `fn(*args)` in `nproc` worker processes on this machine, joined into one process group by
    torch's elastic launcher (c10d rendezvous on 127.0.0.1 at a free port); rank 0's result.
    A worker that fails ends the run: CompressError "rank R: its error", with its exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    most = min(ONE_MACHINE_MAX, MAX_PER_CORE * (os.cpu_count() or 1))
    if not 1 <= nproc <= most:
        raise CompressError(f"--nproc {nproc}: give 1 to {most} worker processes on this machine "
                            f"({os.cpu_count()} cores); for several machines launch with torchrun")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CompressError("--nproc under torchrun: torchrun has started the workers already; leave --nproc out")
    for name in ("torch.distributed.elastic", "torch.multiprocessing", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # a failure is reported once, as one line, below
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1)
    try:
        results = elastic_launch(config, _worker)(fn, args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise worker_error(rank, failure.message) from None
    return results[0]


def worker_error(rank: int, message: Any) -> CompressError:
    """A one-line error naming the failed rank, with the exit code its CompressError would give."""
    text = message.get("message", "") if isinstance(message, dict) else str(message)
    kind, _, rest = text.partition(": ")
    first = (rest if kind in EXIT_CODES else text).strip().splitlines()
    error = CompressError(f"rank {rank}: {first[0] if first else 'failed'}")
    error.exit_code = EXIT_CODES.get(kind, 1)
    return error
