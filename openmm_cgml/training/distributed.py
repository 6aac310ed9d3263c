"""Data-parallel training with PyTorch DistributedDataParallel (``torchrun``; gloo on CPU, NCCL on CUDA).

Every rank runs the same :class:`~openmm_cgml.training.loop.TrainingLoop` with the same seed, so all ranks hold
the same model, optimiser and ``torch.Generator`` at every iteration. Each *global* batch (``batch_size``
examples, as in a single-process run) is split into contiguous shares, one per rank (:func:`share_bounds`); a
rank draws the random numbers of the whole global batch (so its generator stays in step with a single-process
run) and keeps its slice. A rank's loss is its share's *contribution* to the global mean (its mean times its
fraction of the batch), so the sum over ranks is the single-process loss of the whole batch; DDP averages
gradients over ranks, so the loop back-propagates ``world_size`` times the contribution. Two ranks with
``batch_size`` 2b therefore follow one rank with ``batch_size`` 2b to float rounding, and a checkpoint written by
rank 0 resumes on any number of ranks.

Launch with ``torchrun --nproc-per-node N -m openmm_cgml.training DATA.h5 -o MODEL`` (or ``cgml train ... --nproc
N``); :func:`spawn` runs a function on N local processes over loopback (tests, benchmarks).
"""
import os
import socket
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes files (rank 0, or the only process)."""
    return rank() == 0


def barrier():
    """Wait for every rank (no-op outside a process group)."""
    if is_distributed():
        dist.barrier()


def share_bounds(n: int, rank_: int, world: int) -> Tuple[int, int]:
    """The slice ``[lo, hi)`` of ``n`` examples that ``rank_`` of ``world`` takes: contiguous, sizes differing by
    at most one (the first ``n % world`` ranks take one more), possibly empty when ``n < world``."""
    base, extra = divmod(int(n), int(world))
    lo = rank_ * base + min(rank_, extra)
    return lo, lo + base + (1 if rank_ < extra else 0)


def backend_for(device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: Optional[str] = None) -> str:
    """Join the process group that ``torchrun`` describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); returns this rank's device.

    ``device`` None picks ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; ``cuda`` becomes
    ``cuda:LOCAL_RANK``. Without the environment (a plain ``python -m``) nothing is initialised.
    """
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return str(dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend_for(dev), device_id=dev if dev.type == "cuda" else None)
    return str(dev)


def shutdown():
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_result(fn: Callable, *args, **kwargs):
    """Run ``fn`` on rank 0 only and give its return value to every rank; an exception on rank 0 is raised on
    every rank (as ValueError with its message) instead of leaving the others waiting."""
    if not is_distributed():
        return fn(*args, **kwargs)
    box = [None, None]
    if is_main():
        try:
            box[0] = fn(*args, **kwargs)
        except (ValueError, OSError) as err:
            box[1] = str(err)
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise ValueError(box[1]) from None
    return box[0]


def all_reduce_sum(values: Sequence[float], device) -> torch.Tensor:
    """The sum over ranks of ``values`` (float64, on CPU)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


class ObjectiveModule(torch.nn.Module):
    """The model with its objective's loss as ``forward``: what DDP wraps, since the objectives call the model's
    sub-networks directly and DDP synchronises gradients only for work done inside its own ``forward``."""

    def __init__(self, model: torch.nn.Module, objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, generator: torch.Generator):
        return self.objective.loss(self.model, generator)


def wrap(model: torch.nn.Module, objective, device) -> torch.nn.Module:
    """DDP around ``model`` + ``objective``'s loss. Parameters a loss leaves unused (e.g. the dynamics GNN with
    ``dynamics_weight: 0``) are allowed."""
    from torch.nn.parallel import DistributedDataParallel

    dev = torch.device(device)
    ids = [dev] if dev.type == "cuda" else None
    return DistributedDataParallel(ObjectiveModule(model, objective), device_ids=ids,
                                   find_unused_parameters=True)


# ------------------------------------------------------------------------------------------- local launchers
def torchrun_command(nproc: int, argv: Sequence[str], port: Optional[int] = None) -> list:
    """The command line that runs ``python -m openmm_cgml.training ARGV`` on ``nproc`` ranks of this machine with
    ``torch.distributed.run`` (torchrun), rendezvous on loopback."""
    import sys

    port = free_port() if port is None else int(port)
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(int(nproc)),
            "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "openmm_cgml.training", *map(str, argv)]


def run_torchrun(nproc: int, argv: Sequence[str]):
    """Run ``python -m openmm_cgml.training ARGV`` on ``nproc`` local ranks under torchrun and wait; a failed run
    raises ValueError in one line (the ranks' own messages are on stderr above it)."""
    import subprocess

    if int(nproc) < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    rc = subprocess.run(torchrun_command(nproc, argv)).returncode
    if rc != 0:
        raise ValueError(f"training on {int(nproc)} ranks failed (torchrun exit status {rc}); see the messages "
                         "above") from None


# ------------------------------------------------------------------------------------------- local launcher
def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(local_rank: int, nproc: int, port: int, fn: Callable, args: tuple, kwargs: dict):
    os.environ.update({"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(nproc),
                       "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    device = kwargs.get("device")
    device = init_from_env(None if device is None else str(device))
    if "device" in kwargs:
        kwargs = dict(kwargs, device=device)  # cuda -> cuda:LOCAL_RANK
    try:
        fn(*args, **kwargs)
    finally:
        shutdown()


def spawn(nproc: int, fn: Callable, *args, start_method: str = "spawn", **kwargs):
    """Run ``fn(*args, **kwargs)`` on ``nproc`` local processes joined in one process group over loopback (the
    process group is set up from ``kwargs['device']`` if given, else CUDA if available); its return value is
    dropped. ``start_method`` "spawn" starts fresh interpreters (``fn`` must be importable: a module-level
    function); "fork" (POSIX, CPU only: never after CUDA was initialised) skips the imports."""
    import torch.multiprocessing as mp

    if int(nproc) < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    mp.start_processes(_spawned, args=(int(nproc), free_port(), fn, args, kwargs), nprocs=int(nproc), join=True,
                       start_method=start_method)
