"""What a checkpoint must agree on with the run that continues it, so that ``--resume`` never mixes two runs.

A resumed run is only the same run when it trains the same model on the same token stream with the same
optimizer settings: another tokenizer gives other ids, another corpus file moves the data position to other
text, another batch size or learning rate changes what every later step does, and in each case the losses
that follow belong to neither run. So a checkpoint records the training config and the *identity* of what
it trained on (the tokenizer's and every corpus file's content hash and size), and a resume names every
difference. Only settings that change when and how a run reports, not what it computes, pass silently.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .corpus import file_digest
from .data import TokenData

# Settings a resumed run may change without changing what it computes: its length (an explicit longer run),
# when it logs, evaluates and saves, how it shows progress, and where it runs. The data files and the
# tokenizer are compared by content (the identity below), not by the path they were given as.
HARMLESS = frozenset({"max_steps", "time_budget_min", "probe_steps", "eval_every", "eval_batches", "log_every",
                      "save_every", "keep_last", "out_dir", "compile", "progress", "measure_mfu", "device",
                      "train_data", "valid_data", "tokenizer_dir", "strategy"})


def _files(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    return [{"path": str(p), "bytes": Path(p).stat().st_size, "blake2b": file_digest(p)} for p in paths]


def _data_identity(data: TokenData) -> Any:
    if data.files:  # read from files: their content says what it is
        return {"files": _files(data.files), "tokens": data.n_tokens}
    return {"source": data.source, "tokens": data.n_tokens}  # made in memory: what can be said about it


def run_identity(tokenizer_dir: Path, train_data: TokenData, valid_data: TokenData | None) -> dict[str, Any]:
    """What a run trains on, by content: the tokenizer file, the corpus files behind the training and validation
    tokens (hash and size) and how many tokens each gave."""
    return {"tokenizer": file_digest(Path(tokenizer_dir) / "tokenizer.json"),
            "train_data": _data_identity(train_data),
            "valid_data": _data_identity(valid_data) if valid_data is not None else None}


def _describe(value: Any) -> str:
    if isinstance(value, dict) and "files" in value:
        files = ", ".join(f"{f['path']} ({f['bytes']:,} bytes, {f['blake2b'][:8]})" for f in value["files"])
        return f"{files}: {value['tokens']:,} tokens"
    if isinstance(value, str):  # a hash
        return value[:8]
    return repr(value)


def resume_differences(saved: dict[str, Any], train_config: dict[str, Any], identity: dict[str, Any],
                       world_size: int = 1) -> list[str]:
    """Every difference between a checkpoint's ``config.json`` (``saved``) and the run about to continue it
    that changes what training computes, each as ``name: before -> now``; empty when it may continue.
    ``world_size``: the processes about to continue it; what must match is the global batch (per-process batch
    x processes), since the data position counts sequences of all ranks together."""
    differences = []
    saved_train = saved.get("train", {})
    saved_world = saved.get("world_size", 1)
    if saved_train.get("batch_size", 0) * saved_world != train_config.get("batch_size", 0) * world_size:
        differences.append(f"batch_size: {saved_train.get('batch_size')!r} -> {train_config.get('batch_size')!r}"
                           + (f" (x {saved_world} -> x {world_size} processes)" if saved_world != world_size else ""))
    for name in sorted(set(saved_train) | set(train_config)):
        if name in HARMLESS or name in ("model", "batch_size"):
            continue
        before, now = saved_train.get(name), train_config.get(name)
        if before != now:
            differences.append(f"{name}: {before!r} -> {now!r}")
    saved_identity = saved.get("identity")
    if saved_identity is not None:  # checkpoints record it from this version of the course on
        for name in ("tokenizer", "train_data", "valid_data"):
            before, now = saved_identity.get(name), identity.get(name)
            if _without_paths(before) != _without_paths(now):
                differences.append(f"{name}: {_describe(before)} -> {_describe(now)}")
    return differences


def _without_paths(value: Any) -> Any:
    # The same bytes under another path are the same data (a moved or copied corpus file).
    if isinstance(value, dict) and "files" in value:
        return {**value, "files": [{k: v for k, v in f.items() if k != "path"} for f in value["files"]]}
    return value
