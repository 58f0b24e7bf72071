"""Pretraining end to end, the course's main job: pick a size for the machine, train, show what was learned.

``minimind-edu pretrain`` runs :func:`run_pretrain`; notebook 05 makes the same choices with the same functions,
one cell at a time. What they add to the training loop is the choices a learner should not have to make
before a first run: a model and batch shape that suit
a CPU or a GPU (:func:`choose_setup`), a run length that fits the learner's patience (a time budget on
either: :func:`plan_schedule`), and at the end a loss curve, samples and a validation loss per text type,
so that the run ends with something to look at.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from .checkpoint import latest_checkpoint, load_model
from .corpus import FORMATS
from .data import TokenData, load_splits
from .device import autocast_dtype, check_precision, resolve_device, resolve_precision
from .distributed import environment_world_size
from .errors import InvalidArgument, at_least, positive
from .evaluate import evaluate_by_text_type, format_results
from .generate import print_samples
from .metrics import plot_metrics
from .model import PRESETS
from .run_folder import check_out_dir
from .tokenizer import default_tokenizer_dir, load_tokenizer
from .train import Trainer
from .train_config import TrainConfig

# What `make pretrain` / `minimind-edu pretrain` (and notebook 05) do when told neither steps, epochs nor minutes.
DEFAULT_CPU_MINUTES = 14.0  # on 2 CPU cores: ~14 min of training + tokenizing, evaluation, samples
# On a GPU a time budget too, not a number of passes over the corpus: two passes over the shipped corpus
# (3.2M tokens) are only 391 steps at 32 x 512, fewer updates than the CPU default makes, and whatever the
# card, a beginner then knows how long to wait. 10 minutes: less than the CPU default (a learner who rents a
# GPU or opens Colab should not wait longer than without one), long enough to see the loss fall below the
# baselines and the samples turn into stories. How many steps fit depends on the card; not measured here.
DEFAULT_GPU_MINUTES = 10.0
# The CPU default's batch and peak learning rate: the sweep's winner (benchmarks/pretrain_sweep.py, each
# setting trained for the full default budget on the quiet 2-core CPU).
CPU_BATCH = 8
CPU_LR = 2e-3


# torch.compile spends about 40 s compiling before its first step on the 2-core CPU, then runs each step of
# the CPU default 1.31x faster (the sweep's 8 x 256 runs, eager and compiled, 14 minutes each, compile_payback in
# benchmarks/results/pretrain_sweep_cpu.json): it pays back after 2.7 minutes. On for time budgets from
# 5 minutes (both defaults); off for shorter runs and for runs set by steps or epochs, whose length in time is
# not known beforehand.
COMPILE_MIN_MINUTES = 5.0


@dataclass
class PretrainSetup:
    preset: str
    batch_size: int
    seq_len: int
    why: str
    lr: float = TrainConfig.lr  # the peak learning rate


def choose_setup(device: str | torch.device = "cpu") -> PretrainSetup:
    """A model size, batch shape and learning rate that train in minutes on this kind of device.

    The CPU's is the winner of ``benchmarks/pretrain_sweep.py`` (the lowest validation loss in the same
    minutes); the GPU's is MiniMind2-small at MiniMind's own sequence length, not measured here yet.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return PretrainSetup("minimind2-small", 32, 512, "one GPU: MiniMind2-small (26M), 32 x 512 tokens per step")
    return PretrainSetup("course-cpu", CPU_BATCH, 256, f"CPU: the course-cpu model, {CPU_BATCH} x 256 tokens per step",
                         lr=CPU_LR)


def compile_by_default(minutes: float | None) -> bool:
    """Whether a run of ``minutes`` (None: set by steps or epochs) is long enough for torch.compile to pay."""
    return minutes is not None and minutes >= COMPILE_MIN_MINUTES


def steps_for_epochs(data: TokenData, epochs: float, batch_size: int, seq_len: int, grad_accum_steps: int = 1,
                     world_size: int = 1) -> int:
    """Optimizer steps that pass over ``data`` (packed windows of ``seq_len``) ``epochs`` times."""
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    windows = (data.n_tokens - 1) // seq_len
    per_step = batch_size * grad_accum_steps * world_size
    return max(1, math.ceil(epochs * windows / per_step))


def plan_schedule(
    device: str | torch.device,
    train_data: TokenData,
    batch_size: int,
    seq_len: int,
    grad_accum_steps: int = 1,
    steps: int | None = None,
    epochs: float | None = None,
    minutes: float | None = None,
    world_size: int = 1,
) -> dict[str, Any]:
    """The :class:`TrainConfig` fields that set a run's length and when it evaluates and saves.

    At most one of ``steps`` / ``epochs`` / ``minutes`` is used, in that order; with none, the run gets a time
    budget: :data:`DEFAULT_CPU_MINUTES` on a CPU, :data:`DEFAULT_GPU_MINUTES` on a GPU (any other device).
    """
    if steps is not None:
        max_steps = steps
    elif epochs is not None:
        max_steps = steps_for_epochs(train_data, epochs, batch_size, seq_len, grad_accum_steps, world_size)
    else:  # the step count is only known once the first steps are timed
        default = DEFAULT_CPU_MINUTES if torch.device(device).type == "cpu" else DEFAULT_GPU_MINUTES
        return {"time_budget_min": default if minutes is None else minutes, "eval_every": 100, "save_every": 250}
    # Evaluate ~20 times and save ~10 times per run; a short run still warms up for a tenth of its steps.
    return {"max_steps": max_steps, "eval_every": max(1, max_steps // 20), "save_every": max(1, max_steps // 10),
            "warmup_steps": min(TrainConfig.warmup_steps, max(1, max_steps // 10))}


@dataclass
class PretrainOptions:
    """One pretraining run as a learner describes it; every field left at None is chosen for the machine.

    The names are those of ``minimind-edu pretrain``'s flags (``valid_data`` is ``--valid-data``), so that an
    error about a field reads the same in a notebook and on the command line. At most one of ``steps``,
    ``epochs`` and ``minutes`` sets the run's length (none: :func:`plan_schedule` decides).
    """

    preset: str | None = None  # None: choose_setup's model for the device
    data: list[str] | None = None  # training files (.txt or MiniMind .jsonl); None: the shipped corpus
    valid_data: list[str] | None = None  # None: the shipped validation split, or a hold-out of ``data``
    tokenizer: str | None = None  # a tokenizer folder; None: the course tokenizer
    steps: int | None = None
    epochs: float | None = None
    minutes: float | None = None
    batch: int | None = None  # sequences per step and per process; None: choose_setup's
    seq: int | None = None  # tokens per sequence; None: choose_setup's
    accum: int = 1  # gradient accumulation micro-batches per step
    lr: float | None = None  # peak learning rate; None: TrainConfig's
    warmup: int | None = None  # warmup steps; None: TrainConfig's (or a tenth of a short run)
    precision: str = "auto"
    device: str = "auto"
    out: str | None = None  # output folder; None: runs/<preset>
    seed: int = 0
    resume: bool = False  # continue from the newest checkpoint in ``out``
    force: bool = False  # with resume: even with settings that differ from the checkpoint's (each is named)
    overwrite: bool = False  # a new run in an ``out`` that holds an earlier one, which is moved aside first
    format: str = "auto"  # how the data files are read: "auto" (by content), "text" or "jsonl"
    compile: bool | None = None  # None: on for time budgets of COMPILE_MIN_MINUTES or more
    strategy: str = "ddp"  # under torchrun: ddp, zero1 or fsdp (see minimind_edu.sharding)
    eval_every: int | None = None  # None: about 20 evaluations per run
    log_every: int = 10
    save_every: int | None = None  # None: about 10 checkpoints per run
    samples: int = 60  # new tokens per sample printed at the end (0: none)
    progress: bool = True

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("batch", 1), ("seq", 1), ("accum", 1), ("log_every", 1), ("warmup", 0),
                          ("eval_every", 0), ("save_every", 0), ("samples", 0)):
            at_least(name, getattr(self, name), low)
        for name in ("epochs", "minutes", "lr"):
            positive(name, getattr(self, name))
        given = [name for name in ("steps", "epochs", "minutes") if getattr(self, name) is not None]
        if len(given) > 1:
            raise InvalidArgument(given[1], f"cannot be combined with {given[0]}: give one way to set the length")
        if self.preset is not None and self.preset not in PRESETS:
            raise InvalidArgument("preset", f"{self.preset!r} is unknown; choose one of: {', '.join(PRESETS)}")
        check_precision(self.precision, allow_auto=True)
        if self.format not in FORMATS:
            raise InvalidArgument("format", f"must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.resume and self.overwrite:
            raise InvalidArgument("overwrite", "cannot be combined with resume: continue the run, or replace it")
        if self.out is not None:
            check_out_dir(self.out)
        for name in ("data", "valid_data"):
            for path in getattr(self, name) or ():
                if not Path(path).is_file():
                    what = "is a folder" if Path(path).is_dir() else "no such file"
                    raise InvalidArgument(name, f"{path}: {what}; give .txt or MiniMind .jsonl files")


def run_pretrain(options: PretrainOptions, out: TextIO | None = None) -> dict[str, Any] | None:
    """Train as ``options`` say, then plot the loss, print samples and the validation loss per language.

    Returns the run's summary (also written to ``<out>/summary.json``); None on the ranks other than 0
    under torchrun, which only train.
    """
    out = out or sys.stdout
    o = options
    device = resolve_device(o.device)
    setup = choose_setup(device)
    preset = o.preset or setup.preset
    batch = setup.batch_size if o.batch is None else o.batch
    seq = setup.seq_len if o.seq is None else o.seq
    out_dir = Path(o.out or Path("runs") / preset)
    train_data, valid_data = load_splits(o.data, o.valid_data, o.tokenizer, progress=o.progress, format=o.format)

    # Under torchrun each rank trains on its own `batch` rows, so an epoch takes WORLD_SIZE times fewer steps.
    extra = plan_schedule(device, train_data, batch, seq, o.accum, o.steps, o.epochs, o.minutes,
                          environment_world_size())
    lr = o.lr if o.lr is not None else setup.lr
    for name, value in (("eval_every", o.eval_every), ("save_every", o.save_every), ("warmup_steps", o.warmup),
                        ("lr", lr)):
        if value is not None:
            extra[name] = value
    extra["min_lr"] = min(TrainConfig.min_lr, lr)
    if o.resume:  # a resumed run keeps the schedule it was planned with, unless told otherwise
        ckpt = latest_checkpoint(out_dir)
        saved = json.loads((ckpt / "config.json").read_text())["train"] if ckpt is not None else {}
        given = {"warmup_steps": o.warmup, "eval_every": o.eval_every, "save_every": o.save_every, "lr": o.lr,
                 "time_budget_min": o.minutes if o.steps is None and o.epochs is None else "by steps"}
        for name in ("warmup_steps", "eval_every", "save_every", "time_budget_min", "min_lr", "lr"):
            if name in saved and given.get(name) is None and not (name == "min_lr" and o.lr is not None):
                extra[name] = saved[name]
    budget, max_steps = extra.get("time_budget_min"), extra.get("max_steps", TrainConfig.max_steps)
    cfg = TrainConfig(
        model=preset, batch_size=batch, seq_len=seq, grad_accum_steps=o.accum, precision=o.precision,
        device=o.device, log_every=o.log_every, out_dir=str(out_dir), seed=o.seed,
        compile=compile_by_default(budget) if o.compile is None else o.compile,
        train_data=o.data, valid_data=o.valid_data, tokenizer_dir=o.tokenizer, progress=o.progress,
        data_format=o.format, strategy=o.strategy, **extra,
    )
    precision = resolve_precision(o.precision, device)
    schedule = f"{budget:g} minutes" if budget is not None else f"{max_steps} steps"
    print(f"pretraining {preset} on {device} ({precision}): {batch} x {seq} tokens per step, lr {cfg.lr:g}, "
          f"{schedule}; {train_data.n_tokens:,} training tokens; output in {out_dir}", file=out)
    trainer = Trainer(cfg, resume=o.resume, train_data=train_data, valid_data=valid_data, overwrite=o.overwrite,
                      force=o.force)
    if cfg.compile:
        when = " (it compiles on the first step, in the budget's time)" if trainer.compile_status == "on" else ""
        print(f"torch.compile: {trainer.compile_status}{when}", file=out)
    if o.resume and o.steps is not None and trainer.max_steps != o.steps:
        # The checkpoint remembers its run's length; an explicit steps extends (or shortens) it, and the
        # cosine schedule stretches to the new length from here on.
        print(f"resume: step {trainer.step}, training until step {o.steps} (was {trainer.max_steps})", file=out)
        trainer.max_steps = o.steps
    result = trainer.run()
    if not trainer.is_main:  # under torchrun only rank 0 samples, evaluates and writes the summary
        return None
    # Several ranks: the trained weights may be sharded (FSDP), and rank 0 samples alone: read them whole.
    model = load_model(result.checkpoint, device) if trainer.world_size > 1 else result.model.eval()
    tokenizer = load_tokenizer(result.checkpoint or cfg.tokenizer_dir or default_tokenizer_dir())
    if result.history:
        plot_metrics(result.history, out_dir / "loss_curve.png", title=f"{preset}, {device}")

    summary: dict[str, Any] = {"preset": preset, "batch": batch, "seq": seq, "lr": cfg.lr, "step": result.step,
                               "tokens": result.step * trainer.tokens_per_step, "seconds": result.seconds,
                               "compile": trainer.compile_status,
                               # the rate the run's "mfu" is against: how fast this machine multiplies matrices
                               "peak_flops": trainer.peak_flops}
    if result.val_losses:
        summary["val_loss"] = result.val_losses[-1]
    if o.samples > 0:
        print("\nsamples:", file=out)
        summary["samples"] = print_samples(model, tokenizer, max_new_tokens=o.samples, seed=o.seed, out=out)
    by_text_type = evaluate_by_text_type(model, tokenizer, seq_len=min(seq, 256),
                                         autocast_dtype=autocast_dtype(precision))
    summary["by_text_type"] = {kind: r.to_dict() for kind, r in by_text_type.items()}
    print(f"\nvalidation loss reached after {result.step} steps ({summary['tokens']:,} tokens, "
          f"{result.seconds / 60:.1f} min): {summary.get('val_loss', float('nan')):.3f}", file=out)
    print("by text type (shipped validation text):\n" + format_results(by_text_type), file=out)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


class LiveLossPlot:
    """A ``train()`` callback that redraws the loss curve in a notebook as records arrive.

    The title shows the latest tokens/s; outside a notebook (no IPython display) it only collects records.
    ``lang="zh"``: the step, speed, axes and legend in Chinese where a CJK font can draw them.
    """

    def __init__(self, title: str = "", redraw_every: int = 1, lang: str = "en") -> None:
        import matplotlib.pyplot as plt

        from .i18n import plot_text

        plot_text(lang, "", "")  # checks lang; before the axes are made, a CJK font becomes the fallback (if any)
        self.lang = lang
        self.title, self.redraw_every, self.records = title, redraw_every, []
        self.fig, self.ax = plt.subplots(figsize=(7, 3.5))
        plt.close(self.fig)  # shown through display() and updated in place, not by the backend
        try:
            from IPython.display import display

            self.handle = display(self.fig, display_id=True)
        except ImportError:
            self.handle = None

    def __call__(self, record: dict) -> None:
        self.records.append(record)
        if len(self.records) % self.redraw_every == 0 or "val_loss" in record:
            self.draw()

    def draw(self) -> None:
        from .i18n import plot_text

        self.ax.clear()
        last = self.records[-1]
        step = plot_text(self.lang, f"step {last['step']}", f"第 {last['step']} 步")
        speed = (plot_text(self.lang, f"{last['tokens_per_s']:,.0f} tokens/s", f"每秒 {last['tokens_per_s']:,.0f} 词元")
                 if "tokens_per_s" in last else "")
        plot_metrics(self.records, ax=self.ax, title=f"{self.title}  {step}  {speed}".strip(), lang=self.lang)
        if self.handle is not None:
            self.handle.update(self.fig)
