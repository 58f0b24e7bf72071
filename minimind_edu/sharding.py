"""Data-parallel training on several processes three ways: DDP, ZeRO-1 and FSDP2, with strategy-free checkpoints.

Every rank sees its own slice of the global batch; the strategies differ in what each rank keeps:

* ``ddp``: every rank holds the whole model, its gradients and AdamW's state; backward all-reduces the
  gradients in buckets (``bucket_cap_mb``, 25 MiB by default) while it runs. Memory per GPU as on one GPU,
  plus the buckets.
* ``zero1``: DDP for the gradients, but AdamW's m and v are split between the ranks
  (``torch.distributed.optim.ZeroRedundancyOptimizer``: whole tensors, largest first, each to the rank holding
  the fewest elements so far); each rank steps its share and broadcasts the updated weights.
* ``fsdp``: PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) on every block, then on the whole model.
  Weights, gradients and AdamW's state are split along dim 0 between the ranks (``DTensor`` parameters); a
  block's full weights are all-gathered just before its forward (and again before its backward) and freed
  after, its gradients reduce-scattered to their owners. The root unit (embedding = tied LM head, final norm)
  stays gathered from forward until backward ends.

Mixed precision: by default every strategy runs the course's autocast with fp32 weights, so the arithmetic is
the single-GPU trainer's (losses agree with one process to float rounding, and the memory estimator models
it). ``fsdp_param_dtype=True`` instead gives FSDP2 a ``MixedPrecisionPolicy`` (bf16/fp16 gathered weights,
fp32 gradient reduction): half the all-gather traffic and gathered bytes, but the blocks then compute on
low-precision weights and a low-precision residual stream, so losses differ from one process at bf16's
precision (~1e-2) and the estimator does not model it.

Checkpoints do not depend on the strategy: :func:`full_state_dict` gives, on rank 0, the model's ordinary
``state_dict()`` and the optimizer state in the exact format of a single process's
``optim.make_optimizer(model).state_dict()``; :func:`load_full_state_dict` loads that into any strategy at
any world size. Both are collectives: every rank must call them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from .distributed import ProcessGroup
from .optim import fused_adamw_supported, make_optimizer, param_groups

STRATEGIES = ("ddp", "zero1", "fsdp")
LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_strategy(strategy: str) -> str:
    """``strategy`` itself, or ``ValueError`` naming the allowed ones."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    return strategy


@dataclass
class Sharded:
    """A model prepared for one strategy. Call ``forward_model`` in the loop; ``module`` is the MiniMind itself
    (under FSDP its parameters are sharded ``DTensor``s), for evaluation and generation."""

    strategy: str
    forward_model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    group: ProcessGroup


def shard(model: nn.Module, group: ProcessGroup, strategy: str, *, lr: float, weight_decay: float = 0.1,
          betas: tuple[float, float] = (0.9, 0.95), precision: str = "fp32", fsdp_param_dtype: bool = False,
          bucket_cap_mb: float = 25.0) -> Sharded:
    """Wrap a built MiniMind (already on its device, the same initial weights on every rank) for ``strategy``
    and make its AdamW (``optim.param_groups`` weight decay, the fused kernel where this torch has one).

    A group of one process runs the strategy's code anyway (DDP of one rank averages nothing), so the same
    loop serves both. ``precision`` matters only with ``fsdp_param_dtype`` (see the module docs).
    """
    check_strategy(strategy)
    if group.world_size > 1 and not dist.is_initialized():
        raise RuntimeError("shard: the process group is not initialised (call distributed.init_distributed first)")
    device = next(model.parameters()).device
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not dist.is_initialized():
            raise RuntimeError("fsdp needs an initialised process group, even of one process "
                               "(run under torchrun, or dist.init_process_group)")
        policy = MixedPrecisionPolicy()
        if fsdp_param_dtype and precision in LOW_PRECISION:
            policy = MixedPrecisionPolicy(param_dtype=LOW_PRECISION[precision], reduce_dtype=torch.float32)
        for block in model.layers:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return Sharded(strategy, model, model, make_optimizer(model, lr, weight_decay, betas), group)
    forward: nn.Module = model
    if dist.is_initialized():
        from torch.nn.parallel import DistributedDataParallel as DDP

        forward = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                      bucket_cap_mb=bucket_cap_mb)
    if strategy == "ddp":
        return Sharded(strategy, forward, model, make_optimizer(model, lr, weight_decay, betas), group)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    fused = fused_adamw_supported(device.type)
    optimizer = ZeroRedundancyOptimizer(param_groups(model, weight_decay), optimizer_class=torch.optim.AdamW,
                                        lr=lr, betas=tuple(betas), fused=fused or None)
    return Sharded(strategy, forward, model, optimizer, group)


@contextlib.contextmanager
def gradient_sync(sharded: Sharded, sync: bool) -> Iterator[None]:
    """Wrap a micro-batch's forward and backward: ``sync=False`` on all but the last micro-batch of an
    accumulated step, so gradients are averaged across ranks once per step (DDP's ``no_sync``; FSDP keeps
    unsharded gradients, reduce-scattering them on the last micro-batch)."""
    if sharded.strategy == "fsdp":
        sharded.module.set_requires_gradient_sync(sync)
        try:
            yield
        finally:
            sharded.module.set_requires_gradient_sync(True)
    elif not sync and hasattr(sharded.forward_model, "no_sync"):
        with sharded.forward_model.no_sync():
            yield
    else:
        yield


def clip_grad_norm(sharded: Sharded, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm`` (``inf``: only measure it); returns the norm before
    clipping, a plain tensor, the same on every rank. Under FSDP each rank holds a shard of every gradient:
    ``clip_grad_norm_`` sums the shards' squares across ranks (a ``DTensor`` norm) before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(sharded.module.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm


def _canonical_names(module: nn.Module) -> list[list[str]]:
    """Parameter names per AdamW group, in the order ``optim.param_groups`` lists them (the index order of a
    single process's optimizer state dict)."""
    names = {id(p): n for n, p in module.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in param_groups(module, 0.0)]


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kwargs)


def full_state_dict(sharded: Sharded) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict), whole and on the CPU, on rank 0 (``({}, {})`` elsewhere).

    The optimizer's is a single process's ``make_optimizer(model).state_dict()``: state keyed by the index of
    each parameter in ``optim.param_groups`` order. A collective: every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    main = sharded.group.is_main
    if sharded.strategy == "fsdp":
        model_sd = get_model_state_dict(sharded.module, options=_options())
        by_name = get_optimizer_state_dict(sharded.module, sharded.optimizer, options=_options())
        if not main:
            return {}, {}
        return model_sd, _names_to_indices(by_name, _canonical_names(sharded.module))
    model_sd = {k: v.detach().cpu().clone() for k, v in sharded.module.state_dict().items()} if main else {}
    if sharded.strategy == "zero1":
        sharded.optimizer.consolidate_state_dict(to=0)
        return (model_sd, _to_cpu(sharded.optimizer.state_dict())) if main else ({}, {})
    return (model_sd, _to_cpu(sharded.optimizer.state_dict())) if main else ({}, {})


def load_full_state_dict(sharded: Sharded, model_sd: dict, optimizer_sd: dict | None) -> None:
    """Load a :func:`full_state_dict` (saved under any strategy and world size, or by one process) into
    ``sharded``. Every rank passes the same dicts (read from the checkpoint); ``optimizer_sd=None`` loads
    the weights only. A collective under FSDP. The dicts are left unchanged: the optimizer gets a copy (ZeRO's
    loader edits its argument, and AdamW keeps the very m and v tensors it is given and steps them in place).
    """
    if optimizer_sd is not None:
        optimizer_sd = _to_cpu(optimizer_sd)
    if sharded.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(sharded.module, model_sd, options=_options())
        if optimizer_sd is not None:
            by_name = _indices_to_names(optimizer_sd, _canonical_names(sharded.module))
            set_optimizer_state_dict(sharded.module, sharded.optimizer, by_name, options=_options())
        return
    sharded.module.load_state_dict(model_sd)
    if optimizer_sd is not None:
        sharded.optimizer.load_state_dict(optimizer_sd)


def _to_cpu(sd: dict) -> dict:
    """A copy of an optimizer state dict, its tensors cloned to the CPU."""
    state = {k: {n: (v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v) for n, v in s.items()}
             for k, s in sd["state"].items()}
    return {"state": state, "param_groups": [dict(g) for g in sd["param_groups"]]}


def _names_to_indices(sd: dict, groups: list[list[str]]) -> dict:
    """torch.distributed.checkpoint's optimizer state (keyed by parameter name) as a single process's."""
    index = {name: i for i, name in enumerate(n for g in groups for n in g)}
    state = {index[name]: s for name, s in sd["state"].items()}
    out_groups = []
    for group in sd["param_groups"]:
        out_groups.append({**group, "params": sorted(index[n] for n in group["params"])})
    out_groups.sort(key=lambda g: g["params"][0] if g["params"] else len(index))
    return {"state": dict(sorted(state.items())), "param_groups": out_groups}


def _indices_to_names(sd: dict, groups: list[list[str]]) -> dict:
    names = [n for g in groups for n in g]
    if len(sd["param_groups"]) != len(groups) or any(
            len(g["params"]) != len(names_g) for g, names_g in zip(sd["param_groups"], groups)):
        raise ValueError("the optimizer state does not match this model's parameter groups "
                         f"({[len(g) for g in groups]} parameters per group)")
    state = {names[i]: s for i, s in sd["state"].items()}
    out_groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"state": state, "param_groups": out_groups}
