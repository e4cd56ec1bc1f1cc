"""Everything about processes: the process group, wrapping (DDP, FSDP2), full state dicts, reductions.

The same script runs as one process (`python -m ...`) or many (`torchrun --nproc_per_node N -m ...`);
this is the only module that imports torch.distributed. Model, loss and data code stay unaware; the
trainer prints through a rich Console that is quiet on ranks other than 0.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from cookbook.errors import InvalidOptionError
from cookbook.sampling.vllm_engine import close_engine

DistributedStrategy = Literal["auto", "ddp", "fsdp", "none"]
# Below this many parameters a full replica per rank is cheap, and DDP's single all-reduce beats
# FSDP's per-layer gathers.
AUTO_FSDP_MIN_PARAMS = 1_000_000_000


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise InvalidOptionError("device=cuda, but no CUDA device is available (torch sees none): use device=cpu or auto")
    torch_device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(torch_device)
    global _joined
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=torch_device if use_cuda else None)
        _joined = True
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


_joined = False  # whether init_distributed made the process group (alone, a vLLM engine makes its own)


def shutdown_distributed(finished: bool = True) -> None:
    """Leave the process group; `finished=False` after an error, when peers may never arrive."""
    global _joined
    if _joined and dist.is_initialized():
        if finished:
            # Gloo aborts a rank whose peer tore its connections down first; leave together.
            dist.barrier()
        # A vLLM engine's groups live inside this one: the engine destroys them, and then this one.
        close_engine()
        if dist.is_initialized():
            dist.destroy_process_group()
    _joined = False


def choose_strategy(strategy: DistributedStrategy, model: nn.Module, info: DistInfo) -> str:
    if not info.is_distributed or strategy == "none":
        return "none"
    if strategy == "auto":
        num_params = sum(p.numel() for p in model.parameters())
        return "fsdp" if num_params >= AUTO_FSDP_MIN_PARAMS else "ddp"
    return strategy


def wrap_model(model: nn.Module, strategy: str, info: DistInfo, layers: list[nn.Module] | None = None,
               mixed_precision=None) -> nn.Module:
    """DDP, or FSDP2 (`fully_shard` on each decoder layer, then the root, with `mixed_precision`, an
    FSDP2 `MixedPrecisionPolicy`: fp32 sharded masters, compute-dtype gathers)."""
    if strategy == "none":
        return model
    if strategy == "ddp":
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        kwargs = {"mp_policy": mixed_precision} if mixed_precision is not None else {}
        for layer in layers or []:
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        return model
    raise ValueError(f"distributed={strategy!r} is not one of auto, ddp, fsdp, none")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of a tensor that FSDP2 shards (a collective: every rank calls it); others as they are."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def full_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU (gathered from shards under FSDP), on rank 0; other ranks
    get an empty dict (they take part in the gather but keep nothing)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not _ranks_share_state():
        return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _ranks_share_state() -> bool:
    """Whether the model's state is spread over (or replicated on) several ranks. A vLLM engine in a
    single process makes a process group of one for itself; the trainer's state is then a plain one,
    saved and loaded the same with or without an engine."""
    return dist.is_initialized() and dist.get_world_size() > 1


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if not _ranks_share_state():
        return optimizer.state_dict()
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not _ranks_share_state():
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a list of floats over ranks (one collective for all of them)."""
    if not info.is_distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_max(value: float, info: DistInfo) -> float:
    if not info.is_distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def all_reduce_tensor_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max_tensor(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(obj, info: DistInfo):
    """Rank 0's value of `obj` on every rank."""
    if not info.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.is_distributed:
        dist.barrier()


@contextlib.contextmanager
def gradient_sync(model: nn.Module, strategy: str, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if enabled or strategy == "none":
        yield
    elif strategy == "ddp":
        with model.no_sync():
            yield
    elif strategy == "fsdp":
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.is_distributed:
        return [obj]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


@contextlib.contextmanager
def direct_forwards(model: nn.Module, strategy: str):
    """Lets code call the wrapped model's inner modules directly (a sampler calling the causal LM
    step by step) instead of the wrapper's forward. Under FSDP2 the root's own parameters
    (embeddings, final norm, head) are gathered for the duration, and the root is initialised
    first: otherwise the first sharded layer to run would make itself the root. Each layer still
    gathers its weights in its own forward. Other strategies need nothing."""
    if strategy != "fsdp":
        yield
        return
    model._get_fsdp_state()._lazy_init()  # what the root's first forward would do
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def decode_lockstep(strategy: str, info: DistInfo) -> Callable[[bool], bool] | None:
    """The native sampler's `lockstep` under FSDP (busy -> whether any rank is): every rank runs
    each decode step until the last rank's last sequence has stopped, since each forward gathers
    weights collectively. None under other strategies, whose ranks decode on their own."""
    if strategy != "fsdp":
        return None
    return lambda busy: all_reduce_max(float(busy), info) > 0


def lockstep_filler(total: int, mine: int, info: DistInfo, lockstep) -> int:
    """How many stand-in items this rank adds to its share of `total` so that, in lockstep (FSDP),
    every rank runs as many forwards; their results are dropped. 0 without lockstep."""
    return (-(-total // info.world_size) - mine) if lockstep is not None else 0


def combine_ranks(rows: torch.Tensor, info) -> torch.Tensor:
    """Each rank holds NaN except the rows it computed; give every rank all of them. A row that
    several ranks computed (a pair trained in more than one epoch or cycle) takes the lowest such
    rank's value, so it is one computed value and not a sum of them."""
    if not info.is_distributed:
        return rows
    filled = ~torch.isnan(rows).any(dim=1)
    owner = torch.where(filled, info.rank, info.world_size).to(torch.float32)
    owner = -all_reduce_max_tensor(-owner.to(info.device), info).cpu()  # the lowest rank
    mine = (filled & (owner == info.rank)).unsqueeze(1)
    summed = all_reduce_tensor_sum(torch.where(mine, rows, 0.0).to(info.device), info).cpu()
    return torch.where((owner < info.world_size).unsqueeze(1), summed, torch.full_like(summed, float("nan")))
