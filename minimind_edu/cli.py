"""The ``minimind-edu`` command line: the only module that knows argparse.

Each subcommand parses its flags, calls one typed library function (the same code the notebooks run) and
prints. Bad input ends in one line on stderr and exit status 2; the library's :class:`InvalidArgument`
names the argument, which is printed here as the flag that set it.
"""
from __future__ import annotations

import argparse
import errno
import sys
from dataclasses import replace

from .corpus import CorpusError
from .errors import InvalidArgument, RunError, at_least
from .tokenizer import TokenizerError


# --- train-tokenizer -------------------------------------------------------------------------------------
def add_train_tokenizer_command(sub: argparse._SubParsersAction) -> None:
    from .tokenizer import DEFAULT_VOCAB_SIZE

    p = sub.add_parser(
        "train-tokenizer",
        help="train the course's byte-level BPE tokenizer and save it",
        description="Train a byte-level BPE (special tokens <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2) and "
        "save tokenizer.json + tokenizer_config.json, loadable by transformers.AutoTokenizer.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the tokenizer into")
    p.add_argument("--data", nargs="+", metavar="FILE",
                   help="corpus files: plain text or MiniMind JSONL (default: the shipped en+zh corpus)")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, metavar="N",
                   help=f"vocabulary size incl. 3 special tokens (default {DEFAULT_VOCAB_SIZE})")

    def run(args: argparse.Namespace) -> int:
        import time

        from .tokenizer import save_tokenizer, train_tokenizer_from_files

        start = time.perf_counter()
        tok = train_tokenizer_from_files(args.data, args.vocab_size)
        seconds = time.perf_counter() - start
        out = save_tokenizer(tok, args.out)
        print(f"trained in {seconds:.2f} s (reading the corpus included): vocab size {tok.get_vocab_size()}, "
              f"saved to {out}")
        return 0

    p.set_defaults(func=run)


# --- presets ----------------------------------------------------------------------------------------------
def add_presets_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the model presets with their parameter counts and sizes")
    p.add_argument("--json", action="store_true", help="print the same information as JSON")

    def run(args: argparse.Namespace) -> int:
        import json

        from .model import PRESETS, count_parameters

        rows = []
        for name, cfg in PRESETS.items():
            counts = count_parameters(cfg)
            rows.append({
                "preset": name, "total": counts["total"], "embedding": counts["embedding"],
                "per_block": counts["per_block"], "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers,
                "num_heads": cfg.num_heads, "num_kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
                "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
                "max_position_embeddings": cfg.max_position_embeddings, "qk_norm": cfg.qk_norm,
                "num_experts": cfg.num_experts,
                "experts_per_token": cfg.experts_per_token if cfg.num_experts else 0,
                "shared_experts": cfg.shared_experts if cfg.num_experts else 0,
            })
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        header = ["preset", "total", "embedding", "per block", "hidden", "layers", "heads/kv", "head_dim",
                  "ffn", "vocab", "max_pos", "qk_norm", "experts"]
        table = [header] + [[
            r["preset"], f"{r['total']:,}", f"{r['embedding']:,}", f"{r['per_block']:,}", str(r["hidden_size"]),
            str(r["num_layers"]), f"{r['num_heads']}/{r['num_kv_heads']}", str(r["head_dim"]),
            str(r["intermediate_size"]), str(r["vocab_size"]), str(r["max_position_embeddings"]),
            "yes" if r["qk_norm"] else "no",
            f"{r['num_experts']} (top-{r['experts_per_token']}, +{r['shared_experts']} shared)"
            if r["num_experts"] else "-",
        ] for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:  # names left-aligned, numbers right-aligned
            print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        return 0

    p.set_defaults(func=run)


# --- memory -----------------------------------------------------------------------------------------------
def add_memory_command(sub: argparse._SubParsersAction) -> None:
    from .device import PRECISIONS
    from .memory_measure import ATTENTIONS
    from .optim import OPTIMIZERS
    from .sharding import STRATEGIES

    p = sub.add_parser("memory", help="estimate (and optionally measure) the memory of a training step")
    p.add_argument("--preset", default="minimind2-small", help="model preset (default: minimind2-small)")
    p.add_argument("--layers", type=int, help="override the preset's number of layers")
    p.add_argument("--hidden", type=int, help="override the preset's hidden size")
    p.add_argument("--batch", type=int, help="batch size (required unless --calibrate)")
    p.add_argument("--seq", type=int, help="sequence length in tokens (required unless --calibrate)")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS,
                   help="adamw: the trainer's (fused AdamW); adamw-foreach/-forloop: PyTorch's other kernels")
    p.add_argument("--attention", choices=ATTENTIONS, help="default: the preset's")
    p.add_argument("--checkpointing", action="store_true", help="recompute each block in backward")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--gpus", type=int, default=1, metavar="N", help="data-parallel GPUs: the estimate is per GPU")
    p.add_argument("--strategy", choices=STRATEGIES, default="ddp",
                   help="with --gpus > 1: ddp (full copy each), zero1 (AdamW state sharded), fsdp (all sharded)")
    p.add_argument("--gpu", help="GPU card preset (e.g. rtx-4090, t4) or size in GB: adds CUDA overhead, picks the "
                   "attention kernel that card runs, and checks the fit")
    p.add_argument("--measure", action="store_true", help="also run real training steps on this machine")
    p.add_argument("--timeline", metavar="PNG", help="also record one real CPU step's memory after every operator, "
                   "stacked by what it is, and save the picture")
    p.add_argument("--calibrate", action="store_true", help="measure this machine's CUDA overheads (context, "
                   "cuBLAS workspace, allocator reserve) and save them for every later CUDA estimate")
    p.add_argument("--json", action="store_true", help="print every term in bytes as JSON")

    def run(args: argparse.Namespace) -> int:
        import json

        from .memory import get_gpu
        from .memory_measure import StepSpec
        from .memory_report import memory_report
        from .model import get_preset

        if args.calibrate:
            from .memory_calibration import calibrate

            print(calibrate().message)
            return 0
        if args.batch is None or args.seq is None:
            p.error("--batch and --seq are required (unless --calibrate)")
        overrides = {k: v for k, v in (("num_layers", args.layers), ("hidden_size", args.hidden)) if v is not None}
        if "hidden_size" in overrides:  # keep MiniMind2's SwiGLU rule for the new width
            overrides["intermediate_size"] = None
        cfg = replace(get_preset(args.preset), **overrides)
        gpu = None
        if args.gpu:  # a size in GB, else a card preset's name
            try:
                size = float(args.gpu)
            except ValueError:
                size = None
            gpu = get_gpu(args.gpu if size is None else size)
        spec = StepSpec(args.batch, args.seq, args.precision, args.optimizer, args.attention, args.checkpointing,
                        args.grad_accum, world_size=args.gpus, strategy=args.strategy)
        report = memory_report(cfg, spec, gpu, measure=args.measure, model_name=args.preset)
        print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
        if args.timeline:
            from .memory_report import save_timeline

            print(save_timeline(cfg, spec, args.timeline, args.preset))
        return 0

    p.set_defaults(func=run)


# --- plan ------------------------------------------------------------------------------------------------------
def add_plan_command(sub: argparse._SubParsersAction) -> None:
    from .device import PRECISIONS
    from .plan import DEFAULT_MFU
    from .sharding import STRATEGIES

    p = sub.add_parser("plan", help="will a pretraining run fit, and how long will it take (FLOPs and an assumed MFU)")
    p.add_argument("--preset", default="minimind2-small", help="model preset (default: minimind2-small)")
    p.add_argument("--batch", type=int, default=32, help="sequences per GPU per step (default 32)")
    p.add_argument("--seq", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument("--gpu", default="rtx-3090", help="GPU card preset (default rtx-3090)")
    p.add_argument("--gpus", type=int, default=1, metavar="N", help="data-parallel GPUs")
    p.add_argument("--strategy", choices=STRATEGIES, default="ddp")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--tokens", type=int, help="tokens in one pass over the data")
    size.add_argument("--data", nargs="+", metavar="FILE", help="corpus files whose tokens to count (.txt, .jsonl)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer for --data (default: the course tokenizer)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                   help=f"assumed model FLOPs utilisation, 0-1 (default {DEFAULT_MFU}: an assumption, shown)")

    def run(args: argparse.Namespace) -> int:
        from .memory_measure import StepSpec
        from .model import get_preset
        from .plan import count_tokens, plan_training

        tokens = args.tokens if args.tokens is not None else count_tokens(args.data, args.tokenizer)
        spec = StepSpec(args.batch, args.seq, args.precision, world_size=args.gpus, strategy=args.strategy)
        print(plan_training(get_preset(args.preset), spec, args.gpu, tokens, args.epochs, args.mfu).format())
        return 0

    p.set_defaults(func=run)


# --- pretrain, generate, export -------------------------------------------------------------------------

def add_pretrain_command(sub: argparse._SubParsersAction) -> None:
    from .model import PRESETS
    from .pretrain import DEFAULT_CPU_MINUTES, DEFAULT_GPU_MINUTES

    p = sub.add_parser(
        "pretrain",
        help="pretrain a MiniMind on the shipped corpus (or your own), then print samples and validation losses",
        description="Pretrain a MiniMind. Without --steps/--epochs/--minutes it trains for "
        f"{DEFAULT_CPU_MINUTES:g} minutes on a CPU and for {DEFAULT_GPU_MINUTES:g} minutes on a GPU. The --out folder "
        "receives checkpoints/, metrics.jsonl (one JSON record per logged step) and loss_curve.png.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model size (default: course-cpu on a CPU, minimind2-small on a GPU)")
    p.add_argument("--data", nargs="+", metavar="PATH", default=None,
                   help="training text: plain .txt or MiniMind .jsonl ({\"text\": ...} per line), streamed and "
                   "cached as tokens; default: the shipped TinyStories + Tang poems")
    p.add_argument("--valid-data", nargs="+", metavar="PATH", default=None,
                   help="validation files (default: the shipped validation split, or the last 2%% of --data)")
    p.add_argument("--tokenizer", metavar="DIR", default=None,
                   help="tokenizer folder (default: the course tokenizer, trained on first use)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps")
    length.add_argument("--epochs", type=float, help="passes over the training data")
    length.add_argument("--minutes", type=float,
                        help="time budget: steps are fitted so training (and the cosine schedule) ends in about "
                        "this long")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default: 16 on CPU, 32 on GPU)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: 256 on CPU, 512 on GPU)")
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation micro-batches per step")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the training loop's)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--out", default=None, help="output folder (default: runs/<preset>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out; refused "
                   "when a setting differs from the checkpoint's (each is named)")
    p.add_argument("--force", action="store_true", help="with --resume: continue even with changed settings")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an --out that holds an earlier "
                   "one; the earlier run is moved to <out>.previous-<time>, not deleted")
    p.add_argument("--format", choices=["auto", "text", "jsonl"], default="auto",
                   help="how to read --data files (default: by their content, whatever their suffix)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for time budgets of 5 minutes or more, where its "
                   "compiling time pays back; without a C++ compiler the run continues without it)")
    p.add_argument("--strategy", choices=["ddp", "zero1", "fsdp"], default="ddp",
                   help="under torchrun: ddp (a full copy per GPU), zero1 (AdamW state sharded), fsdp (weights, "
                   "gradients and AdamW state sharded); checkpoints load under any of them")
    p.add_argument("--eval-every", type=int, default=None,
                   help="validate every N steps (default: ~20 times per run; 0: only at the end)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=None,
                   help="checkpoint every N steps (default: ~10 times per run; 0: only at the end)")
    p.add_argument("--samples", type=int, default=60, metavar="TOKENS",
                   help="new tokens per sample printed at the end (0: no samples)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for PyTorch (default: all cores; on a busy shared machine 1 can be faster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> int:
    import torch

    from .pretrain import PretrainOptions, run_pretrain

    at_least("threads", args.threads, 1)  # a process setting, so the command line's own
    options = PretrainOptions(
        preset=args.preset, data=args.data, valid_data=args.valid_data, tokenizer=args.tokenizer, steps=args.steps,
        epochs=args.epochs, minutes=args.minutes, batch=args.batch, seq=args.seq, accum=args.accum, lr=args.lr,
        warmup=args.warmup, precision=args.precision, device=args.device, out=args.out, seed=args.seed,
        resume=args.resume, force=args.force, overwrite=args.overwrite, format=args.format, compile=args.compile,
        strategy=args.strategy,
        eval_every=args.eval_every, log_every=args.log_every, save_every=args.save_every, samples=args.samples,
        progress=not args.no_progress,
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run_pretrain(options)
    return 0


def add_generate_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="sample text from a checkpoint (streamed as it is generated)",
                       description="Continue prompts with a trained model. PATH: a run's --out folder (its newest "
                       "checkpoint), a checkpoint folder, a folder written by `minimind-edu export`, or MiniMind's own "
                       "weights: a Hugging Face folder saved by MiniMind, or a .pth state dict (pretrain_512.pth).")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--tokenizer", metavar="DIR", default=None,
                   help="tokenizer folder (default: the one beside the weights; for a .pth, MiniMind2's shipped "
                   "tokenizer, data/minimind/minimind2)")
    p.add_argument("--prompt", action="append", default=None,
                   help="text to continue (repeatable; default: English and Chinese openings)")
    p.add_argument("--chat", action="store_true",
                   help="wrap each prompt as a user message in the ChatML template (<|im_start|>user ...)")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40, help="sample among the k likeliest tokens (0: no limit)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the likeliest tokens up to this "
                   "total probability, in (0, 1]")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from .checkpoint import load_trained
    from .device import resolve_device
    from .generate import SAMPLE_PROMPTS, check_sampling, print_samples, stream_chat

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    model, tokenizer = load_trained(args.path, resolve_device(args.device), tokenizer=args.tokenizer)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.chat:
        for message in args.prompt or ["Tell me a story about a cat.", "写一首关于春天的诗。"]:
            print(f"user: {message}\nassistant: ", end="", flush=True)
            for piece in stream_chat(model, tokenizer, message, args.max_new_tokens, **options):
                print(piece, end="", flush=True)
            print("\n")
        return 0
    prompts = {"prompt": args.prompt} if args.prompt else SAMPLE_PROMPTS
    print_samples(model, tokenizer, prompts, args.max_new_tokens, args.temperature, args.top_k, args.seed,
                  top_p=args.top_p)
    return 0


def add_export_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a checkpoint in the Hugging Face format (AutoModelForCausalLM)",
                       description="Export PATH (a run's --out folder or a checkpoint) to OUT: config.json, "
                       "model.safetensors and the tokenizer, loadable with transformers' AutoModelForCausalLM "
                       "and AutoTokenizer.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="weight precision to store")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .checkpoint import export_checkpoint

    out = export_checkpoint(args.path, args.out, args.dtype)
    print(f"exported to {out}; load it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


# --- doctor ----------------------------------------------------------------------------------------------
def add_doctor_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check this machine for the course: Python, PyTorch, device, bf16, "
                                      "threads, disk, a CJK font, JupyterLab widgets")
    p.add_argument("--path", default=".", help="where the disk check looks (default: the current folder)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a check needs attention")

    def run(args: argparse.Namespace) -> int:
        from .doctor import format_report, run_checks

        checks = run_checks(args.path)
        print(format_report(checks))
        return 1 if args.strict and not all(c.ok for c in checks) else 0

    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minimind-edu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_tokenizer_command(sub)
    add_presets_command(sub)
    add_memory_command(sub)
    add_plan_command(sub)
    add_pretrain_command(sub)
    add_generate_command(sub)
    add_export_command(sub)
    add_doctor_command(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InvalidArgument as err:  # the library names the argument; here it is the flag that set it
        print(f"minimind-edu {args.command}: error: --{err.argument.replace('_', '-')} {err.detail}", file=sys.stderr)
        return 2
    except (CorpusError, TokenizerError, ValueError, FileNotFoundError, RunError) as err:
        print(f"minimind-edu {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system said no: permission, a full disk, a file where a folder should be
        print(f"minimind-edu {args.command}: error: {os_error_advice(err)}", file=sys.stderr)
        return 2


def os_error_advice(err: OSError) -> str:
    """One line for a failed file operation: what, where, and what to do about it."""
    where = f"{err.filename}: " if err.filename else ""
    advice = {errno.EACCES: "choose a folder you can write to, or fix its permissions",
              errno.EPERM: "choose a folder you can write to, or fix its permissions",
              errno.EROFS: "the file system is read-only; choose another folder",
              errno.ENOSPC: "the disk is full; free some space or choose a folder on another disk",
              errno.EDQUOT: "the disk quota is used up; free some space or choose another folder",
              errno.ENOTDIR: "a file stands where a folder is needed; choose another path",
              errno.EISDIR: "a folder stands where a file is needed; choose another path"}.get(err.errno, "")
    return f"{where}{err.strerror or err}" + (f"; {advice}" if advice else "")


if __name__ == "__main__":
    sys.exit(main())
