"""Run by tests/test_sharding.py under ``python -m torch.distributed.run --nproc_per_node 2`` (gloo, CPU):
a minimal training loop over minimind_edu.sharding, each strategy, and checkpoints moved between strategies.
Also imported by the test for the single-process reference loop. Rank 0 writes the results as JSON."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from minimind_edu.device import autocast_dtype
from minimind_edu.distributed import ProcessGroup, leave_distributed
from minimind_edu.model import MiniMind, get_preset
from minimind_edu.optim import make_optimizer
from minimind_edu.sharding import (
    STRATEGIES,
    Sharded,
    clip_grad_norm,
    full_state_dict,
    gradient_sync,
    load_full_state_dict,
    shard,
)

SEQ, MICRO, ACCUM, LR, CLIP = 32, 2, 2, 3e-3, 1.0  # per-rank micro-batch of MICRO sequences
warnings.filterwarnings("ignore", message="FSDP2-wrapped module")  # Block returns its (k, v) views, unused


def global_batch(step: int, world: int) -> torch.Tensor:
    """Step ``step``'s windows: (ACCUM, world * MICRO, SEQ + 1) token ids, the same on every rank."""
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, 6400, (ACCUM, world * MICRO, SEQ + 1), generator=gen)


def new_model() -> MiniMind:
    torch.manual_seed(0)
    return MiniMind(get_preset("tiny"))


def single_process_losses(steps: range, precision: str = "fp32", world: int = 2,
                          start: tuple[dict, dict] | None = None, save_at: int | None = None,
                          save_to: Path | None = None) -> list[float]:
    """The same steps in one process: every micro-batch holds all ``world`` ranks' sequences."""
    model = new_model()
    opt = make_optimizer(model, LR)
    if start is not None:
        model.load_state_dict(start[0])
        opt.load_state_dict(start[1])
    losses = []
    for step in steps:
        windows = global_batch(step, world)
        total = 0.0
        for micro in range(ACCUM):
            ids, targets = windows[micro, :, :-1], windows[micro, :, 1:]
            with torch.autocast("cpu", dtype=autocast_dtype(precision), enabled=precision != "fp32"):
                loss = model(ids, targets).loss / ACCUM
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        if save_at is not None and step + 1 == save_at and save_to is not None:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, save_to)
    return losses


def sharded_losses(sharded: Sharded, steps: range, precision: str = "fp32") -> list[float]:
    group = sharded.group
    losses = []
    for step in steps:
        windows = global_batch(step, group.world_size)
        rows = slice(group.rank * MICRO, (group.rank + 1) * MICRO)
        total = torch.zeros(())
        for micro in range(ACCUM):
            ids, targets = windows[micro, rows, :-1], windows[micro, rows, 1:]
            with gradient_sync(sharded, micro == ACCUM - 1):
                with torch.autocast("cpu", dtype=autocast_dtype(precision), enabled=precision != "fp32"):
                    loss = sharded.forward_model(ids, targets).loss / ACCUM
                loss.backward()
            total += loss.detach()
        clip_grad_norm(sharded, CLIP)
        sharded.optimizer.step()
        sharded.optimizer.zero_grad(set_to_none=True)
        dist.all_reduce(total)
        losses.append(float(total) / group.world_size)
    return losses


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    group = ProcessGroup(dist.get_rank(), dist.get_world_size())
    results: dict = {"world_size": group.world_size}

    def make(strategy: str, precision: str = "fp32", **kwargs) -> Sharded:
        return shard(new_model(), group, strategy, lr=LR, precision=precision, **kwargs)

    for strategy in STRATEGIES:
        results[f"{strategy}/fp32"] = sharded_losses(make(strategy), range(4))
        results[f"{strategy}/bf16"] = sharded_losses(make(strategy, "bf16"), range(3), "bf16")
    results["fsdp/bf16-param-dtype"] = sharded_losses(make("fsdp", "bf16", fsdp_param_dtype=True), range(3),
                                                      "bf16")
    # checkpoints across strategies: 2 steps under one, save the full state dict, 2 more under another
    for first, then in (("ddp", "fsdp"), ("fsdp", "zero1"), ("zero1", "ddp"), ("fsdp", "fsdp")):
        a = make(first)
        losses = sharded_losses(a, range(2))
        model_sd, opt_sd = full_state_dict(a)
        path = out_dir / f"{first}.pt"
        if group.is_main:
            torch.save({"model": model_sd, "optimizer": opt_sd}, path)
        dist.barrier()
        saved = torch.load(path, weights_only=True)
        b = make(then)
        load_full_state_dict(b, saved["model"], saved["optimizer"])
        results[f"resume/{first}->{then}"] = losses + sharded_losses(b, range(2, 4))
    # a single process's checkpoint (written by the test) continued under each strategy
    single = torch.load(out_dir / "single.pt", weights_only=True)
    for strategy in STRATEGIES:
        b = make(strategy)
        load_full_state_dict(b, single["model"], single["optimizer"])
        results[f"from-single/{strategy}"] = sharded_losses(b, range(2, 4))
    if group.is_main:
        (out_dir / "results.json").write_text(json.dumps(results))
    leave_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
