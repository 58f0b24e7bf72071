"""The training loop: one implementation for notebook 03, notebook 05 and ``minimind-edu pretrain``.

A :class:`TrainConfig` says everything about a run; :class:`Trainer` holds the model, optimizer, data position
and step, and ``run()`` is the loop (``train()`` in one call). The pieces it is made of live in their own
modules, so that a notebook can build each alone: the schedule and optimizer in :mod:`~minimind_edu.optim`,
device and precision in :mod:`~minimind_edu.device`, process groups in :mod:`~minimind_edu.distributed`,
checkpoint files in :mod:`~minimind_edu.checkpoint`. What stays here is one idea, about 500 lines:
the loop and the state it must save and restore to resume exactly (step, length or time spent, optimizer,
data position, random state), which only make sense together.

Callbacks are called (on rank 0) with each metric record, the same dict that is appended to
``out_dir/metrics.jsonl``: ``step, tokens, loss, lr, grad_norm, tokens_per_s, mfu, peak_mem, epoch,
elapsed_s`` and ``val_loss`` on evaluation steps (``loss`` is the mean training loss since the previous
record). A callback that returns ``True`` stops training after a checkpoint is written at that step.
Gradient accumulation is exact under padding: a step's loss is the mean over the counted targets (not
``IGNORE_INDEX``) of all its micro-batches and ranks (:func:`accumulation_divisor`).
Units: ``tokens`` counts tokens trained on by all ranks so far; ``tokens_per_s`` is for all ranks together,
measured over the steps since the previous record (evaluation and checkpoint time left out); ``mfu`` is
per device, against :func:`minimind_edu.flops.device_peak_flops` (None when the peak is unknown or
``measure_mfu=False``): a GPU's datasheet peak, or on a CPU a measured matmul rate, so that there it is a
CPU utilisation against that rate rather than an MFU (:func:`minimind_edu.flops.utilisation_label`);
``peak_mem`` is bytes: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident memory on a CPU.

Time budget: with ``time_budget_min`` set, the run is planned by the clock, not by a step count fixed in
advance, so a machine that slows down (or speeds up) midway still ends on time. ``run()`` counts every second
it spends against the budget: training steps, callbacks, evaluations and checkpoints (building the
``Trainer``, which tokenizes and loads, is not counted). After each step, rank 0 measures the time of the
recent steps (the upper median of the last ``probe_steps``), of the last evaluation (one is timed after the
first step) and of the last checkpoint (estimated from its size until one is written), and decides two
things that every rank then receives (:func:`~minimind_edu.distributed.from_rank0`): whether this step is
the last (another step, with what is due after it and the final evaluation and checkpoint, would not fit),
and the learning rate of the next step. Warmup is ``warmup_steps`` steps as always; after it, the cosine's
progress is the fraction of the budget's remaining time that will have passed when the next step ends, so
the cosine reaches ``min_lr`` when the time runs out, and a slowdown stretches the schedule over fewer steps
instead of overrunning. ``cfg.max_steps`` is not used; ``max_steps`` is a running estimate (for the
progress bar) that equals ``step`` when the run ends. The run ends within about one step (plus a periodic
evaluation due at the end) of the budget when the times measured predict the next ones.
Resuming a time-budgeted run keeps the accounting: a checkpoint saves the time spent so far (up to and
including its own write) and when warmup ended, and the resumed run trains for what remains of the budget,
continuing the cosine from where it was. What it cannot promise is bit-identical losses: how many steps fit
depends on the machine's speed, which is measured afresh; and time lost after the last checkpoint of the
killed run (and the restart) is not counted, so the wall time over both runs exceeds the budget by that.
Step-count runs (no ``time_budget_min``) do not look at the clock, and their kill-and-resume is bit-exact.

A checkpoint is a folder ``out_dir/checkpoints/step_00000123/`` holding ``model.safetensors`` (the weights,
no code), ``state.pt`` (optimizer, GradScaler, step, max_steps, time spent, data position, RNG states:
tensors and plain containers only, loaded with ``torch.load(weights_only=True)``), ``config.json`` (model
and training configs) and the tokenizer files. It is written under a temporary name and renamed, so a
crash mid-write leaves the previous checkpoint intact. ``resume=True`` continues from the newest one:
on CPU the losses that follow are bit-identical to a run that was never interrupted.

Distributed: run the same script under ``torchrun --nproc_per_node N`` (nccl on GPUs, gloo on CPU).
Each rank takes its own slice of every global batch of ``batch_size * world_size`` sequences, so N ranks
with ``batch_size=B`` train like one process with ``batch_size=N*B`` (to float rounding); only rank 0 logs
and saves. ``cfg.strategy`` chooses what each rank keeps (:mod:`~minimind_edu.sharding`: DDP, ZeRO-1, FSDP2);
checkpoints hold whole tensors, so a run resumes under any strategy and number of ranks.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import flops
from .checkpoint import latest_checkpoint, load_model, save_checkpoint_dir
from .corpus import CorpusError
from .data import IGNORE_INDEX, TokenData, load_splits, make_batches
from .device import CompiledOrEager, autocast, compile_unavailable, peak_memory, resolve_device, resolve_precision
from .distributed import from_rank0, init_distributed, leave_distributed, mean_over_ranks, sum_over_ranks
from .errors import RunError
from .model import MiniMind
from .optim import lr_at, make_optimizer
from .resume import resume_differences, run_identity
from .run_folder import RunLock, check_out_dir, prepare_run_folder
from .sharding import Sharded, clip_grad_norm, full_state_dict, gradient_sync, load_full_state_dict, shard
from .tokenizer import default_tokenizer_dir
from .train_config import TrainConfig

Callback = Callable[[dict], "bool | None"]
STATE_VERSION = 1


def counted_targets(targets: torch.Tensor) -> int:
    """How many targets add to the loss: those that are not ``IGNORE_INDEX`` (padding)."""
    return int((targets != IGNORE_INDEX).sum())


def accumulation_divisor(counted_in_step: int, counted: int, world_size: int = 1) -> float:
    """What a micro-batch's mean loss is divided by, so that the step's gradient is the mean over all
    ``counted_in_step`` targets of the step (all micro-batches, all ranks).

    A micro-batch's mean loss times ``counted`` is the sum of its token losses; the step wants the sum of
    all token losses over ``counted_in_step``, hence ``mean / (counted_in_step / counted)``. With several
    ranks, DDP (and FSDP) *average* gradients over the ``world_size`` ranks, so each rank multiplies its
    share by ``world_size`` to make that average a sum. Example: micro-batches of 3 and 1 counted targets
    have divisors 4/3 and 4; the mean of their means would weigh the lone target as much as the three.
    Packed batches count every target: the divisor is exactly ``grad_accum_steps``, as a plain average.
    """
    if counted < 1 or counted_in_step < counted:
        raise ValueError(f"need 1 <= counted <= counted_in_step, got counted={counted}, "
                         f"counted_in_step={counted_in_step}")
    return counted_in_step / (counted * world_size)


@dataclass
class TrainResult:
    history: list[dict]
    step: int
    max_steps: int
    out_dir: Path | None
    checkpoint: Path | None
    model: MiniMind
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def steps(self) -> list[int]:
        return [r["step"] for r in self.history if "loss" in r]

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.history if "loss" in r]

    @property
    def val_steps(self) -> list[int]:
        return [r["step"] for r in self.history if "val_loss" in r]

    @property
    def val_losses(self) -> list[float]:
        return [r["val_loss"] for r in self.history if "val_loss" in r]


class Trainer:
    """Holds the model, optimizer, data position and step; ``run()`` is the loop (see module docstring)."""

    def __init__(self, cfg: TrainConfig, resume: bool = False,
                 train_data: TokenData | None = None, valid_data: TokenData | None = None,
                 overwrite: bool = False, force: bool = False):
        """``resume``: continue the newest good checkpoint in ``cfg.out_dir`` (an error when there is none);
        ``force``: even when settings differ from the checkpoint's (each is named); ``overwrite``: start afresh
        in a folder that holds an earlier run, which is moved aside first. See :mod:`minimind_edu.run_folder`."""
        cfg.validate()  # again: the fields of a dataclass can be changed after it was built
        self.cfg = cfg
        self.group = init_distributed(cfg.device)
        self.rank, self.world_size, self.is_main = self.group.rank, self.group.world_size, self.group.is_main
        device = resolve_device(cfg.device)
        if device.type == "cuda" and self.world_size > 1:
            device = torch.device("cuda", self.group.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        self.precision = resolve_precision(cfg.precision, device)
        self.model_cfg = cfg.model_config()
        self.out_dir = check_out_dir(cfg.out_dir) if cfg.out_dir is not None else None
        if self.out_dir is not None and self.is_main:
            prepare_run_folder(self.out_dir, resume, overwrite)
        self.tokenizer_dir = Path(cfg.tokenizer_dir) if cfg.tokenizer_dir else default_tokenizer_dir()

        if train_data is None:
            train_data, valid_data_loaded = load_splits(cfg.train_data, cfg.valid_data, cfg.tokenizer_dir,
                                                        cfg.valid_fraction, progress=cfg.progress and self.is_main,
                                                        format=cfg.data_format)
            valid_data = valid_data if valid_data is not None else valid_data_loaded
        self.identity = run_identity(self.tokenizer_dir, train_data, valid_data)
        train_data.check_vocab(self.model_cfg.vocab_size)
        if valid_data is not None:
            valid_data.check_vocab(self.model_cfg.vocab_size)
        self.batches = make_batches(train_data, cfg.batch_kind, cfg.batch_size, cfg.seq_len, cfg.seed,
                                    self.rank, self.world_size)
        try:
            self.valid_batches = (make_batches(valid_data, cfg.batch_kind, cfg.batch_size, cfg.seq_len, cfg.seed)
                                  if valid_data is not None else None)
        except CorpusError as err:
            held_out = cfg.valid_data is None and cfg.train_data is not None
            where = (f"the validation hold-out (the last {cfg.valid_fraction:.0%} of the training documents)"
                     if held_out else "the validation data")
            raise CorpusError(f"{where} is too short for one window of seq_len + 1 = {cfg.seq_len + 1} tokens "
                              f"({err}); give longer validation files with --valid-data, or use a smaller --seq"
                              ) from None

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = MiniMind(self.model_cfg).to(device)
        self.sharded: Sharded | None = None  # several processes: the model wrapped for cfg.strategy
        if self.world_size > 1:
            if cfg.strategy == "fsdp" and self.precision == "fp16":
                raise ValueError("strategy fsdp with fp16 is not supported (its GradScaler would need sharded "
                                 "gradients); use bf16, fp32, or another strategy")
            self.sharded = shard(self.model, self.group, cfg.strategy, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 betas=cfg.betas)
            self.optimizer = self.sharded.optimizer
        else:
            self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay, cfg.betas)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.step = 0
        self.max_steps = cfg.max_steps
        self.budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min is not None else None
        self.time_spent = 0.0  # seconds of the budget spent before this run() (by a resumed run's past)
        self.warmup_end_s: float | None = None  # budget seconds spent when warmup ended: the cosine's start
        self.finished = False  # a time-budgeted run that ended (its final checkpoint says so)
        self._progress = 0.0  # the cosine's progress for the next step, when planned by time
        self._cycle_times: deque[float] = deque(maxlen=max(1, cfg.probe_steps))
        self._eval_s: float | None = None
        self._save_s: float | None = None
        self.last_lr = self.lr()
        self.history: list[dict] = []
        self.checkpoint: Path | None = None
        if resume:
            self._resume(force)

        self.fwd_model = self.sharded.forward_model if self.sharded is not None else self.model
        # what became of cfg.compile: None (not asked for), "on", or why the run is eager after all
        self.compile_status: str | None = None
        if cfg.compile:
            unavailable = compile_unavailable(device)
            if unavailable is None:
                self.fwd_model = CompiledOrEager(self.fwd_model, on_fallback=self._compile_failed)
                self.compile_status = "on"
            else:
                self._compile_failed(unavailable)
        self._flops_per_token = flops.training_flops_per_token(self.model_cfg, cfg.seq_len)
        self._peak: float | None | str = "unmeasured"

    def _compile_failed(self, reason: str) -> None:
        self.compile_status = f"off ({reason})"
        if self.is_main:
            print(f"torch.compile cannot run here, so training continues without it: {reason}",
                  file=sys.stderr, flush=True)

    # -- one step ---------------------------------------------------------------------------------------
    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.seq_len * self.cfg.grad_accum_steps * self.world_size

    def lr(self, step: int | None = None) -> float:
        """The learning rate of step ``step`` (default: the next). Under a time budget, steps after warmup get
        the cosine at the progress last planned by the clock (see the module docstring)."""
        c = self.cfg
        step = self.step if step is None else step
        if self.budget_s is None or step < c.warmup_steps:
            return lr_at(step, c.lr, c.min_lr, c.warmup_steps, self.max_steps)
        return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1.0 + math.cos(math.pi * self._progress))

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns (loss, grad norm before clipping).

        The step's loss is the mean over every counted target (not ``IGNORE_INDEX``) of all its micro-batches
        and, with several ranks, of all ranks: each micro-batch's mean loss is weighted by its share of those
        targets (:func:`accumulation_divisor`), so padded micro-batches of unequal counts train exactly like
        one batch holding them all. Packed batches count every target: the divisor is ``grad_accum_steps``.
        A micro-batch with no counted target adds nothing (a step with none at all, which the course's data
        cannot make, as every document row predicts at least one token, would log a loss of 0).
        """
        lr = self.last_lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        accum = self.cfg.grad_accum_steps
        micro_batches = [self.batches.next() for _ in range(accum)]
        counts = [counted_targets(targets) for _, targets in micro_batches]
        # known before any backward pass (one small collective), so every micro-batch gets its final weight
        counted_in_step = sum_over_ranks(sum(counts), self.group, self.device)
        loss_sum = torch.zeros((), device=self.device)
        for micro, ((inputs, targets), counted) in enumerate(zip(micro_batches, counts)):
            inputs, targets = inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
            # Several ranks: average (or reduce-scatter) gradients only on the last micro-batch, not on every one.
            sync = contextlib.nullcontext()
            if self.sharded is not None:
                sync = gradient_sync(self.sharded, micro == accum - 1)
            with sync:
                with autocast(self.device, self.precision):
                    out = self.fwd_model(inputs, targets)
                if counted:
                    loss = out.loss / accumulation_divisor(counted_in_step, counted, self.world_size)
                else:  # no counted target: its mean is 0/0; a zero loss still runs the backward other ranks await
                    loss = out.logits.sum() * 0.0
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        if self.sharded is not None:  # under FSDP each rank holds a shard of every gradient
            grad_norm = clip_grad_norm(self.sharded, max_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        # Each rank's loss_sum is world_size x its share of the global mean, so their mean is the global mean.
        mean_over_ranks(loss_sum, self.group)
        return float(loss_sum), float(grad_norm)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the same ``eval_batches`` validation batches every time (comparable across steps)."""
        if self.valid_batches is None:
            raise ValueError("no validation data was given")
        self.model.eval()
        total = 0.0
        batches = self.valid_batches.eval_batches(self.cfg.eval_batches)
        for inputs, targets in batches:
            with autocast(self.device, self.precision):
                total += float(self.model(inputs.to(self.device), targets.to(self.device)).loss)
        self.model.train()
        return total / len(batches)

    # -- checkpoints --------------------------------------------------------------------------------------
    def state_dict(self, optimizer_state: dict | None = None) -> dict:
        """What a resume needs besides the weights; ``optimizer_state``: the optimizer's, gathered from shards."""
        state = {
            "version": STATE_VERSION,
            "step": self.step,
            "max_steps": self.max_steps,
            # the budget's accounting: time spent up to the end of this checkpoint's own write
            "time_spent_s": self._elapsed() + self._save_estimate(),
            "warmup_end_s": -1.0 if self.warmup_end_s is None else self.warmup_end_s,
            "progress": self._progress,
            "finished": self.finished,
            # what the budget planner has measured, so that a resumed run plans its end with real figures
            "eval_s": -1.0 if self._eval_s is None else self._eval_s,
            "save_s": -1.0 if self._save_s is None else self._save_s,
            "optimizer": optimizer_state if optimizer_state is not None else self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "data": self.batches.state_dict(),
            "world_size": self.world_size,
            "rng_cpu": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def save_checkpoint(self) -> Path | None:
        if self.out_dir is None:
            return None
        weights = optimizer_state = None
        if self.sharded is not None:  # whole weights and optimizer state, whatever the strategy: a collective
            weights, optimizer_state = full_state_dict(self.sharded)
        if not self.is_main:
            return None
        configs = {"model": self.model_cfg.to_dict(), "train": self.cfg.to_dict(), "world_size": self.world_size,
                   "tokenizer": str(self.tokenizer_dir), "identity": self.identity, "step": self.step}
        self.checkpoint = save_checkpoint_dir(self.out_dir, self.step, self.model, self.state_dict(optimizer_state),
                                              configs, self.tokenizer_dir, self.cfg.keep_last, weights=weights)
        return self.checkpoint

    def _resume(self, force: bool) -> None:
        if self.out_dir is None:
            raise ValueError("resume=True needs an out_dir to resume from")
        ckpt = latest_checkpoint(self.out_dir)
        if ckpt is None:
            raise RunError(f"{self.out_dir}: no checkpoint to resume from (is the folder right?); start a new run "
                           "without --resume")
        saved = json.loads((ckpt / "config.json").read_text())
        if saved["model"] != self.model_cfg.to_dict():
            changed = sorted(k for k, v in self.model_cfg.to_dict().items() if saved["model"].get(k) != v)
            raise RunError(f"{ckpt}: the checkpoint's model differs from this run's ({', '.join(changed)}); its "
                           "weights cannot continue as another model: resume with the same --preset, or a new --out")
        differences = resume_differences(saved, self.cfg.to_dict(), self.identity, self.world_size)
        if differences and not force:
            raise RunError(f"{ckpt}: cannot resume, {len(differences)} setting(s) differ from the checkpoint's: "
                           f"{'; '.join(differences)}. Resume with the same settings, or add --force to continue "
                           f"with the new ones from step {saved.get('step')}")
        if differences and self.is_main:
            print(f"resume --force: continuing {ckpt} with changed settings: {'; '.join(differences)}",
                  file=sys.stderr)
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        weights = load_model(ckpt).state_dict()
        if self.sharded is not None:  # checkpoints hold whole tensors: any strategy and world size loads them
            load_full_state_dict(self.sharded, weights, state["optimizer"])
        else:
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.batches.load_state_dict(state["data"])
        self.step, self.max_steps = state["step"], state["max_steps"]
        if self.budget_s is not None:  # older checkpoints, and step-count ones, spent no budget time
            self.time_spent = float(state.get("time_spent_s", 0.0))
            self.warmup_end_s = None if state.get("warmup_end_s", -1.0) < 0 else float(state["warmup_end_s"])
            self._progress = float(state.get("progress", 0.0))
            self.finished = bool(state.get("finished", False))
            self._eval_s = None if state.get("eval_s", -1.0) < 0 else float(state["eval_s"])
            self._save_s = None if state.get("save_s", -1.0) < 0 else float(state["save_s"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.checkpoint = ckpt
        # Records written after this checkpoint belong to the lost future: drop them, they will be redone.
        metrics = self.out_dir / "metrics.jsonl"
        if self.is_main and metrics.exists():
            kept = [line for line in metrics.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.step]
            tmp = metrics.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, metrics)
            self.history = [json.loads(line) for line in kept]

    # -- the loop -----------------------------------------------------------------------------------------
    @property
    def peak_flops(self) -> float | None:
        """What the records' ``mfu`` divides by: a GPU's datasheet peak, or this CPU's bf16 (or fp32) matmul rate
        measured at the first record; None before it, or where there is no figure. A run's speed depends on it
        (CPUs of one kind differ by 2x from day to day), so the pretraining summary records it."""
        return None if isinstance(self._peak, str) else self._peak

    def _mfu(self, tokens_per_s: float) -> float | None:
        if not self.cfg.measure_mfu:
            return None
        if self._peak == "unmeasured":
            self._peak = flops.device_peak_flops(self.device, self.precision)
        return flops.mfu(tokens_per_s / self.world_size, self._flops_per_token, self._peak)

    # -- the time budget: planned after every step by rank 0's clock ----------------------------------------
    def _elapsed(self) -> float:
        """Budget seconds spent: by earlier runs of this checkpoint chain, plus this run() so far."""
        started = getattr(self, "_started", None)
        return self.time_spent + (time.perf_counter() - started if started is not None else 0.0)

    def _save_estimate(self) -> float:
        """Seconds one checkpoint takes: the last one measured, else its size at a cautious 100 MB/s."""
        if self.out_dir is None or not self.is_main:
            return 0.0
        if self._save_s is not None:
            return self._save_s
        n_params = sum(p.numel() for p in self.model.parameters())
        return 0.05 + n_params * 4 * 3 / 100e6  # weights and AdamW's two moments in fp32

    def _plan(self) -> bool:
        """After a step: is it the last, and what progress will the next step's cosine have (time budget)."""
        c = self.cfg
        if self.budget_s is None:
            return self.step >= self.max_steps
        now = self._elapsed()
        cycle = now - self._last_plan - self._overhead
        self._last_plan, self._overhead = now, 0.0
        if self.step > 1 or not self._cycle_times:  # the first step pays one-off costs: keep it only alone
            if self.step == 2 and len(self._cycle_times) == 1:
                self._cycle_times.clear()
            self._cycle_times.append(cycle)
        step_s = sorted(self._cycle_times)[len(self._cycle_times) // 2]  # upper median of the recent steps
        eval_s = (self._eval_s or 0.0) if self.valid_batches is not None else 0.0
        save_s = self._save_estimate()
        due = 0.0
        if self.valid_batches is not None and c.eval_every and self.step % c.eval_every == 0:
            due += eval_s
        if self.out_dir is not None and c.save_every and self.step % c.save_every == 0:
            due += save_s
        end_overhead = eval_s + save_s  # the final evaluation and checkpoint
        final = now + due + step_s + end_overhead > self.budget_s
        if self.warmup_end_s is None and self.step >= c.warmup_steps:
            self.warmup_end_s = now
        progress = 0.0
        if self.warmup_end_s is not None:
            span = self.budget_s - end_overhead - self.warmup_end_s
            progress = 1.0 if span <= 0 else min(1.0, max(0.0, (now + due + step_s - self.warmup_end_s) / span))
        per_step = step_s + (eval_s / c.eval_every if c.eval_every else 0.0) + (
            save_s / c.save_every if c.save_every and self.out_dir is not None else 0.0)
        left = 0 if final else max(1, int((self.budget_s - now - due - end_overhead) / per_step))
        plan = torch.tensor([float(final), progress, float(self.step + left)], dtype=torch.float64,
                            device=self.device)
        from_rank0(plan, self.group)  # ranks time themselves apart: all must act on rank 0's plan
        final, self._progress, self.max_steps = bool(plan[0].item()), float(plan[1]), int(plan[2])
        self.finished = final
        return final

    def _timed(self, fn: Callable[[], object]) -> tuple[object, float]:
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
        self._overhead += seconds  # evaluations and checkpoints are timed apart from the steps
        return value, seconds

    def run(self, callbacks: Iterable[Callback] = ()) -> TrainResult:
        """Train until ``max_steps`` (or a callback stops it), holding the output folder's lock meanwhile."""
        lock = RunLock(self.out_dir) if self.out_dir is not None and self.is_main else None
        if lock is not None:
            lock.acquire()
        try:
            return self._loop(list(callbacks))
        finally:
            if lock is not None:
                lock.release()

    def _check_finite(self, loss: float, grad_norm: float, what: str = "the loss") -> None:
        # Under fp16 an infinite gradient norm is routine: GradScaler skips that step and lowers its scale.
        if math.isfinite(loss) and (math.isfinite(grad_norm) or self.precision == "fp16"):
            return
        kept = (f"the last good checkpoint, {self.checkpoint}, is kept" if self.checkpoint is not None
                else "no checkpoint was written")
        raise RunError(f"step {self.step}: {what} is {loss} (gradient norm {grad_norm}): training diverged, and "
                       f"stopped before saving anything; {kept}. Try a lower learning rate (--lr) or "
                       "--precision fp32")

    def _loop(self, callbacks: list[Callback]) -> TrainResult:
        cfg = self.cfg
        started = self._started = time.perf_counter()
        self._last_plan, self._overhead = self._elapsed(), 0.0
        if self.budget_s is not None and self.warmup_end_s is None and self.step >= cfg.warmup_steps:
            self.warmup_end_s = self._elapsed()  # warmup_steps=0, or a step-count checkpoint given a budget
        metrics_file = self.out_dir / "metrics.jsonl" if (self.out_dir is not None and self.is_main) else None
        if metrics_file is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=self.max_steps, initial=self.step, desc="training", unit="step",
                   disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        window_losses: list[float] = []
        window_start = time.perf_counter()
        stopped = False
        while not (self.finished if self.budget_s is not None else self.step >= self.max_steps):
            loss, grad_norm = self.train_step()
            self._check_finite(loss, grad_norm)
            window_losses.append(loss)
            if self.budget_s is not None and self._eval_s is None and self.valid_batches is not None:
                _, self._eval_s = self._timed(self.evaluate)  # the final evaluation must fit: time one now
            final = self._plan()
            bar.total = max(self.max_steps, self.step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.last_lr:.2e}")
            due = final or (cfg.eval_every and self.step % cfg.eval_every == 0)
            evaluate = self.valid_batches is not None and due
            if self.step % cfg.log_every == 0 or evaluate or final:
                elapsed = time.perf_counter() - window_start
                tps = len(window_losses) * self.tokens_per_step / elapsed
                record = {
                    "step": self.step,
                    "tokens": self.step * self.tokens_per_step,
                    "loss": sum(window_losses) / len(window_losses),
                    "lr": self.last_lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tps,
                    "mfu": self._mfu(tps),
                    "peak_mem": peak_memory(self.device),
                    "epoch": self.batches.epoch,
                    "elapsed_s": time.perf_counter() - started,
                }
                if evaluate:
                    record["val_loss"], self._eval_s = self._timed(self.evaluate)
                    self._check_finite(record["val_loss"], 0.0, "the validation loss")
                self.history.append(record)
                if metrics_file is not None:
                    with open(metrics_file, "a") as f:
                        f.write(json.dumps(record, allow_nan=False) + "\n")  # JSON has no NaN
                if self.is_main:  # a list, not any(generator): every callback sees the record, even after a stop
                    stopped = any([cb(record) is True for cb in callbacks])
                if self.world_size > 1:  # every rank must agree to stop
                    stopped = bool(from_rank0(torch.tensor(float(stopped), device=self.device), self.group).item())
                window_losses, window_start = [], time.perf_counter()
            if final or stopped or (cfg.save_every and self.step % cfg.save_every == 0):
                _, seconds = self._timed(self.save_checkpoint)
                if self.out_dir is not None and self.is_main:
                    self._save_s = seconds
                window_start = time.perf_counter()  # saving is not training: keep it out of tokens/s
            if stopped:
                break
        bar.close()
        self._started = None
        self.time_spent += time.perf_counter() - started
        if self.group.owned:
            leave_distributed()
        return TrainResult(self.history, self.step, self.max_steps, self.out_dir, self.checkpoint, self.model,
                           stopped, time.perf_counter() - started)


def train(cfg: TrainConfig, callbacks: Iterable[Callback] = (), resume: bool = False,
          train_data: TokenData | None = None, valid_data: TokenData | None = None) -> TrainResult:
    """Train (or, with ``resume=True``, continue training) as ``cfg`` says; see the module docstring."""
    return Trainer(cfg, resume, train_data, valid_data).run(callbacks)
