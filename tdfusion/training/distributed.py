"""Data-parallel training across processes and machines, on PyTorch's own stack.

Launch with ``torchrun`` (``python -m torch.distributed.run``); it starts one process per
GPU and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`setup` joins the process group from those variables (NCCL for CUDA devices, Gloo
for CPU); without them, or with ``WORLD_SIZE=1``, nothing happens and training is the
plain single-process loop.

Why explicit collectives instead of ``DistributedDataParallel``: the meta phase runs the
networks through :func:`torch.func.functional_call` with parameter dicts, which
bypasses DDP's module hooks, and its inner step must be averaged *inside* the graph
(see :func:`mean_tensors`). The fusion phase then uses the same helpers, so there is one
mechanism for both phases.

Semantics (see ``docs/distributed.md``): ``data.batch_size`` is per process; every step
draws one global batch of ``batch_size * world_size`` samples and process ``r`` takes the
``r``-th contiguous slice (:func:`shard`). Averaging every gradient (and the inner-step
gradients of the meta phase, differentiably) makes a run on ``W`` processes compute what a
single process computes on the global batch, for tasks whose loss is a mean over the batch.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..device import resolve_device
from ..errors import TDFusionError

__all__ = [
    "Topology", "any_true", "average_gradients", "broadcast_module_", "broadcast_object",
    "broadcast_tensors_",
    "gather_objects", "is_main", "mean_tensors", "rank", "reduce_metrics", "setup", "shard", "teardown",
    "topology_from_env", "world_size",
]

#: How long a collective may wait for the slowest process (rank 0 evaluates and writes
#: checkpoints while the others wait). ``TDFUSION_DIST_TIMEOUT_MIN`` overrides it.
DEFAULT_TIMEOUT_MIN = 60


@dataclass(frozen=True)
class Topology:
    """Where this process sits: global ``rank``, ``local_rank`` on its machine, ``world_size``."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise TDFusionError(f"environment variable {name}={text!r}: expected an integer (set by torchrun)") from None


def topology_from_env(environ: Mapping[str, str] | None = None) -> Topology:
    """The torchrun variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``); defaults: one process."""
    environ = os.environ if environ is None else environ
    world = _env_int(environ, "WORLD_SIZE", 1)
    rank_ = _env_int(environ, "RANK", 0)
    local = _env_int(environ, "LOCAL_RANK", rank_)
    if world < 1 or not 0 <= rank_ < world or local < 0:
        raise TDFusionError(f"inconsistent torchrun environment: RANK={rank_}, LOCAL_RANK={local}, WORLD_SIZE={world}")
    return Topology(rank_, local, world)


def setup(device_name: str | None = None, environ: Mapping[str, str] | None = None) -> tuple[Topology, torch.device]:
    """Join the process group when launched by torchrun; return ``(topology, device)``.

    ``device_name`` is ``train.device``: with several processes, ``auto``/``cuda`` becomes
    ``cuda:LOCAL_RANK`` (one GPU per process, NCCL); ``cpu`` uses Gloo. An explicit
    ``cuda:K`` is refused there (pick GPUs with ``CUDA_VISIBLE_DEVICES``).
    """
    topo = topology_from_env(environ)
    if not topo.distributed:
        return topo, resolve_device(device_name)
    device = resolve_device(device_name)
    if device.type == "cuda":
        if device.index is not None:
            raise TDFusionError(f"--device {device_name}: under torchrun every process uses GPU LOCAL_RANK; "
                                "choose the GPUs with CUDA_VISIBLE_DEVICES and pass --device cuda")
        if topo.local_rank >= torch.cuda.device_count():
            raise TDFusionError(f"LOCAL_RANK {topo.local_rank} but only {torch.cuda.device_count()} GPU(s) "
                                "visible on this machine: lower --nproc_per_node")
        device = torch.device("cuda", topo.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise TDFusionError(f"--device {device_name}: distributed training supports cuda (NCCL) and cpu (Gloo)")
    if not dist.is_initialized():
        minutes = float(os.environ.get("TDFUSION_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN))
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes),
                                    **({"device_id": device} if backend == "nccl" else {}))
        except (RuntimeError, ValueError) as exc:  # rendezvous failures (DistNetworkError is a RuntimeError)
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TDFusionError(f"cannot join the {backend} process group at {where} as rank {topo.rank} "
                                f"of {topo.world_size}: {first}") from None
    return topo, device


def teardown() -> None:
    """Leave the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0, or the only one)."""
    return rank() == 0


def _comm_device(tensor: torch.Tensor | None = None) -> torch.device:
    # NCCL moves CUDA tensors only; Gloo handles CPU tensors.
    if _active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if tensor is None else tensor.device


# -- sharding ----------------------------------------------------------------------------
def shard(items: Sequence, rank_: int | None = None, world: int | None = None) -> list:
    """The ``rank``-th of ``world`` equal contiguous slices of a global batch.

    ``len(items)`` must be a multiple of ``world`` (the trainer draws ``batch_size * world``).
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if len(items) % world:
        raise ValueError(f"a global batch of {len(items)} does not split over {world} processes")
    per = len(items) // world
    return list(items[rank_ * per:(rank_ + 1) * per])


# -- averaging -----------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward is again a sum over processes.

    Written here because ``torch.distributed.nn.functional.all_reduce`` is deprecated and
    its suggested replacement lives in a private module; the rule itself is one line:
    if every process's output is ``sum_r x_r``, then ``d(sum_r' L_r')/dx_r = sum_r' dL_r'/dout``.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _AllReduceSum.apply(grad)


def mean_tensors(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Average each tensor over the processes; differentiable.

    The tensors travel as one flat buffer (one collective). The result stays in the
    autograd graph: the backward of a sum across processes is again a sum across
    processes (:class:`_AllReduceSum`), which is what the meta
    phase needs when the inner-step gradient of F is averaged while it is still a function
    of G's parameters. A single process gets its tensors back unchanged.
    """
    tensors = list(tensors)
    if not _active() or not tensors:
        return tensors
    world = dist.get_world_size()
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    for (_, device), idx in groups.items():
        flat = torch.cat([tensors[i].reshape(-1) for i in idx])
        comm = _comm_device(flat)
        summed = _AllReduceSum.apply(flat.to(comm)).to(device) / world
        for i, piece in zip(idx, summed.split([tensors[i].numel() for i in idx])):
            out[i] = piece.view_as(tensors[i])
    return out  # type: ignore[return-value]


@torch.no_grad()
def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each parameter's ``.grad`` by its mean over the processes (in place).

    A parameter without a gradient on this process counts as a zero gradient, so every
    process sends the same buffer layout.
    """
    if not _active():
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    for p, g in zip(params, mean_tensors(grads)):
        p.grad = g


def reduce_metrics(values: Mapping[str, float]) -> dict[str, float]:
    """Mean of each scalar over the processes (float64; NaN/inf propagate)."""
    if not _active() or not values:
        return dict(values)
    keys = list(values)  # the same order on every process: the same code built the dict
    buf = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(buf)
    buf /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, buf.cpu().tolist())}


def any_true(flag: bool) -> bool:
    """True when ``flag`` is set on at least one process (e.g. a stop request)."""
    if not _active():
        return bool(flag)
    buf = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return bool(buf.item() > 0)


# -- broadcasting ----------------------------------------------------------------------------
@torch.no_grad()
def broadcast_tensors_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite every process's ``tensors`` with rank ``src``'s (in place, one collective per dtype)."""
    if not _active():
        return
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    for group in groups.values():
        comm = _comm_device(group[0])
        flat = torch.cat([t.detach().reshape(-1) for t in group]).to(comm)
        dist.broadcast(flat, src)
        for t, piece in zip(group, flat.split([t.numel() for t in group])):
            t.copy_(piece.view_as(t))


def broadcast_module_(module: nn.Module, src: int = 0, buffers_only: bool = False) -> None:
    """Copy rank ``src``'s parameters (unless ``buffers_only``) and buffers into ``module``."""
    params = () if buffers_only else tuple(module.parameters())
    broadcast_tensors_([*params, *module.buffers()], src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s (picklable) ``obj`` on every process."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
