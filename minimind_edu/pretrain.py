"""Pretraining end to end: pick a size for the machine, train, then show what the model learned.

The pieces behind notebook 05 and ``minimind-edu pretrain`` / ``generate`` / ``export``:

    choose_setup(device)              -> PretrainSetup (preset, batch, seq) that suits a CPU or a GPU
    steps_for_epochs(data, epochs, batch, seq, accum) -> optimizer steps for that many passes
    plan_schedule(device, data, batch, seq, ...)     -> the run's length, evaluation and checkpoint cadence
    print_samples(model, tokenizer)   # streams continuations of English and Chinese prompts
    stream_chat(model, tokenizer, message)  # ChatML-formatted prompt, stops at <|im_end|>
    resolve_checkpoint(path)          # a checkpoint folder from a run's out_dir or the folder itself
    load_for_generation(path)         # (model, tokenizer) from a checkpoint or an exported HF folder
    plot_metrics(metrics, png_path)   # loss curve (train + validation) from metrics.jsonl records
    export_checkpoint(path, out_dir)  # Hugging Face folder (config.json, model.safetensors, tokenizer)
    run_pretrain_cli(args)            # what `minimind-edu pretrain` does with its parsed arguments
    check_pretrain_arguments(args), check_sampling_arguments(args), device_argument(name)
                                      # bad options: a one-line error naming them, before any work
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch
from tokenizers import Tokenizer

from .checkpoint import resolve_checkpoint
from .data import TokenData, load_splits
from .evaluate import evaluate_by_language, format_results
from .generate import WrappedWriter, stream_text, stream_text_from_ids
from .model import MiniMind
from .tokenizer import apply_chat_template, default_tokenizer_dir, load_tokenizer
from .checkpoint import load_model
from .device import resolve_device, resolve_precision
from .train import TrainConfig, Trainer

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# Openings in the style of the training text: TinyStories (en) and a Tang poem's title line (zh).
SAMPLE_PROMPTS: dict[str, list[str]] = {
    "en": ["Once upon a time, there was a little", "One day, Lily went to the park with her"],
    "zh": ["《春夜》李白\n", "《秋思》\n"],
}


# What `make pretrain` / `minimind-edu pretrain` (and notebook 05) do when told neither steps, epochs nor minutes.
DEFAULT_CPU_MINUTES = 14.0  # on 2 CPU cores: ~14 min of training + tokenizing, evaluation, samples
DEFAULT_GPU_EPOCHS = 2.0  # a GPU passes over the small shipped corpus a few times in minutes


@dataclass
class PretrainSetup:
    preset: str
    batch_size: int
    seq_len: int
    why: str


def choose_setup(device: str | torch.device = "cpu") -> PretrainSetup:
    """A model size and batch shape that train in minutes on this kind of device."""
    device = torch.device(device)
    if device.type == "cuda":
        return PretrainSetup("minimind2-small", 32, 512, "one GPU: MiniMind2-small (26M), 32 x 512 tokens per step")
    return PretrainSetup("course-cpu", 16, 256, "CPU: the course-cpu model, 16 x 256 tokens per step")


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

    At most one of ``steps`` / ``epochs`` / ``minutes`` is used, in that order; with none, a CPU trains for
    :data:`DEFAULT_CPU_MINUTES` and a GPU for :data:`DEFAULT_GPU_EPOCHS` passes over ``train_data``.
    """
    budget = None
    if steps is not None:
        max_steps = steps
    elif epochs is not None:
        max_steps = steps_for_epochs(train_data, epochs, batch_size, seq_len, grad_accum_steps, world_size)
    elif minutes is not None or torch.device(device).type == "cpu":
        budget = DEFAULT_CPU_MINUTES if minutes is None else minutes
    else:
        max_steps = steps_for_epochs(train_data, DEFAULT_GPU_EPOCHS, batch_size, seq_len, grad_accum_steps,
                                     world_size)
    if budget is not None:  # the step count is only known once the first steps are timed
        return {"time_budget_min": budget, "eval_every": 100, "save_every": 250}
    # Evaluate ~20 times and save ~10 times per run; a short run still warms up for a tenth of its steps.
    return {"max_steps": max_steps, "eval_every": max(1, max_steps // 20), "save_every": max(1, max_steps // 10),
            "warmup_steps": min(TrainConfig.warmup_steps, max(1, max_steps // 10))}


def print_samples(
    model: MiniMind,
    tokenizer: Tokenizer,
    prompts: dict[str, Sequence[str]] | None = None,
    max_new_tokens: int = 60,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int | None = 0,
    out: TextIO | None = None,
    top_p: float | None = None,
    width: int = 100,
) -> dict[str, str]:
    """Stream a continuation of each prompt to ``out`` (stdout), lines wrapped before ``width`` columns;
    returns {prompt: continuation}."""
    out = out or sys.stdout
    samples = {}
    for lang, texts in (prompts or SAMPLE_PROMPTS).items():
        for prompt in texts:
            writer = WrappedWriter(out, width)
            writer.write(f"[{lang}] {prompt}")
            pieces = []
            for piece in stream_text(model, tokenizer, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                     top_p=top_p, seed=seed):
                pieces.append(piece)
                writer.write(piece)
            writer.flush()
            out.write("\n\n")
            samples[prompt] = "".join(pieces)
    return samples


def stream_chat(model: MiniMind, tokenizer: Tokenizer, message: str, max_new_tokens: int = 100,
                **kwargs) -> Iterator[str]:
    """Answer one user message in MiniMind's ChatML format (stops at ``<|im_end|>``); yields text pieces.

    A model that was only pretrained has never seen a conversation, so expect it to continue the text rather
    than answer: chat behaviour comes from supervised fine-tuning, the step after pretraining.
    """
    text = apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True)
    prompt_ids = tokenizer.encode(text, add_special_tokens=False).ids
    yield from stream_text_from_ids(model, tokenizer, prompt_ids, max_new_tokens, **kwargs)


def is_hf_folder(path: Path) -> bool:
    """True for a folder written by ``export`` (a Hugging Face config), not a training checkpoint."""
    config = path / "config.json"
    return config.exists() and "architectures" in json.loads(config.read_text(encoding="utf-8"))


def load_for_generation(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MiniMind, Tokenizer]:
    """(model, tokenizer) from a training checkpoint / run folder, or from a folder written by ``export``."""
    folder = resolve_checkpoint(path)
    if is_hf_folder(folder):
        from .hf import load_hf

        return load_hf(folder).to(device).eval(), load_tokenizer(folder)
    return load_model(folder, device), load_tokenizer(folder)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (a file, or the run folder that holds it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None
    return records


def plot_metrics(records: Sequence[dict], png_path: str | os.PathLike | None = None, title: str = "",
                 ax: Axes | None = None) -> Axes:
    """Training and validation loss against tokens seen; saved to ``png_path`` when given. Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    train = [(r["tokens"] / 1e6, r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens"] / 1e6, r["val_loss"]) for r in records if "val_loss" in r]
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="tab:orange")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if png_path is not None:
        Path(png_path).parent.mkdir(parents=True, exist_ok=True)
        ax.figure.tight_layout()
        ax.figure.savefig(png_path, dpi=110)
    return ax


def export_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "fp32") -> Path:
    """Write a training checkpoint (or a run's newest) as a Hugging Face folder, tokenizer included."""
    from .hf import export_hf

    folder = resolve_checkpoint(path)
    if Path(out_dir).resolve() == folder.resolve():
        raise ValueError(f"{out_dir}: that is the checkpoint being exported; give another output folder")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    model = load_model(folder).to(torch_dtype)
    tokenizer_dir = folder if (folder / "tokenizer.json").exists() else None
    return export_hf(model, out_dir, tokenizer_dir=tokenizer_dir)


def check_pretrain_arguments(args: argparse.Namespace) -> None:
    """Fail fast, naming the option, before minutes of tokenizing: argparse only checks the types."""
    at_least = {"--steps": (args.steps, 1), "--batch": (args.batch, 1), "--seq": (args.seq, 1),
                "--accum": (args.accum, 1), "--threads": (args.threads, 1), "--log-every": (args.log_every, 1),
                "--warmup": (args.warmup, 0), "--eval-every": (args.eval_every, 0),
                "--save-every": (args.save_every, 0), "--samples": (args.samples, 0)}
    for flag, (value, low) in at_least.items():
        if value is not None and value < low:
            raise ValueError(f"{flag} must be at least {low}, got {value}")
    for flag, value in (("--epochs", args.epochs), ("--minutes", args.minutes), ("--lr", args.lr)):
        if value is not None and not value > 0:
            raise ValueError(f"{flag} must be positive, got {value:g}")
    for flag, paths in (("--data", args.data), ("--valid-data", args.valid_data)):
        for path in paths or ():
            if not Path(path).is_file():
                what = "is a folder" if Path(path).is_dir() else "no such file"
                raise ValueError(f"{flag} {path}: {what}; give .txt or MiniMind .jsonl files")


def check_sampling_arguments(args: argparse.Namespace) -> None:
    """``generate``'s options, checked before the first token is printed (an error mid-line is hard to read)."""
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not args.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0 (0: always the most likely token), got {args.temperature:g}")
    if args.top_k is not None and args.top_k < 0:
        raise ValueError(f"--top-k must be >= 0 (0: no top-k filter), got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p:g}")


def device_argument(name: str) -> torch.device:
    """:func:`resolve_device` for a ``--device`` option: a bad name becomes a one-line error naming it."""
    try:
        return resolve_device(name)
    except (RuntimeError, ValueError) as err:  # torch.device("bogus") raises RuntimeError
        raise ValueError(f"--device {name}: {err}") from None


def run_pretrain_cli(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``minimind-edu pretrain``: train as the arguments say, then print samples and validation losses."""
    out = out or sys.stdout
    check_pretrain_arguments(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = device_argument(args.device)
    setup = choose_setup(device)
    preset = args.preset or setup.preset
    batch = setup.batch_size if args.batch is None else args.batch
    seq = setup.seq_len if args.seq is None else args.seq
    out_dir = Path(args.out or Path("runs") / preset)
    train_data, valid_data = load_splits(args.data, args.valid_data, args.tokenizer, progress=not args.no_progress)

    # Under torchrun each rank trains on its own `batch` rows, so an epoch takes WORLD_SIZE times fewer steps.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    extra = plan_schedule(device, train_data, batch, seq, args.accum, args.steps, args.epochs, args.minutes,
                          world_size)
    for field, value in (("eval_every", args.eval_every), ("save_every", args.save_every),
                         ("warmup_steps", args.warmup), ("lr", args.lr)):
        if value is not None:
            extra[field] = value
    if args.lr is not None:
        extra["min_lr"] = min(TrainConfig.min_lr, args.lr)
    budget, max_steps = extra.get("time_budget_min"), extra.get("max_steps", TrainConfig.max_steps)
    cfg = TrainConfig(
        model=preset, batch_size=batch, seq_len=seq, grad_accum_steps=args.accum, precision=args.precision,
        device=args.device, log_every=args.log_every, out_dir=str(out_dir), seed=args.seed,
        compile=args.compile, train_data=args.data, valid_data=args.valid_data, tokenizer_dir=args.tokenizer,
        progress=not args.no_progress, **extra,
    )
    schedule = f"{budget:g} minutes" if budget is not None else f"{max_steps} steps"
    print(f"pretraining {preset} on {device} ({resolve_precision(args.precision, device)}): {batch} x {seq} tokens "
          f"per step, {schedule}; {train_data.n_tokens:,} training tokens; output in {out_dir}", file=out)
    trainer = Trainer(cfg, resume=args.resume, train_data=train_data, valid_data=valid_data)
    if args.resume and args.steps is not None and trainer.max_steps != args.steps:
        # The checkpoint remembers its run's length; an explicit --steps extends (or shortens) it, and the
        # cosine schedule stretches to the new length from here on.
        print(f"resume: step {trainer.step}, training until step {args.steps} (was {trainer.max_steps})", file=out)
        trainer.max_steps = args.steps
    result = trainer.run()
    if not trainer.is_main:  # under torchrun only rank 0 samples, evaluates and writes the summary
        return 0
    model = result.model.eval()
    tokenizer = load_tokenizer(result.checkpoint or cfg.tokenizer_dir or default_tokenizer_dir())
    if result.history:
        plot_metrics(result.history, out_dir / "loss_curve.png", title=f"{preset}, {device}")

    summary: dict = {"preset": preset, "step": result.step, "tokens": result.step * trainer.tokens_per_step,
                     "seconds": result.seconds}
    if result.val_losses:
        summary["val_loss"] = result.val_losses[-1]
    if args.samples > 0:
        print("\nsamples:", file=out)
        summary["samples"] = print_samples(model, tokenizer, max_new_tokens=args.samples, seed=args.seed, out=out)
    precision = resolve_precision(args.precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    by_language = evaluate_by_language(model, tokenizer, seq_len=min(seq, 256), autocast_dtype=dtype)
    summary["by_language"] = {lang: r.to_dict() for lang, r in by_language.items()}
    print(f"\nvalidation loss reached after {result.step} steps ({summary['tokens']:,} tokens, "
          f"{result.seconds / 60:.1f} min): {summary.get('val_loss', float('nan')):.3f}", file=out)
    print("by language (shipped validation text):\n" + format_results(by_language), file=out)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


class LiveLossPlot:
    """A ``train()`` callback that redraws the loss curve in a notebook as records arrive.

    The title shows the latest tokens/s; outside a notebook (no IPython display) it only collects records.
    """

    def __init__(self, title: str = "", redraw_every: int = 1) -> None:
        import matplotlib.pyplot as plt

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
        self.ax.clear()
        last = self.records[-1]
        speed = f"{last['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in last else ""
        plot_metrics(self.records, ax=self.ax, title=f"{self.title}  step {last['step']}  {speed}".strip())
        if self.handle is not None:
            self.handle.update(self.fig)
