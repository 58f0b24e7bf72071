"""Checkpoints: a folder of safetensors weights + a weights-only state file, written atomically.

Layout of ``out_dir/checkpoints/step_00000123/``: ``model.safetensors`` (weights: plain tensor data, no
code), ``state.pt`` (optimizer, GradScaler, step, data position, RNG states: tensors and plain containers,
read back with ``torch.load(weights_only=True)``), ``config.json`` (model + training configs) and the
tokenizer files, and last ``manifest.json``: each file's size and hash. A checkpoint is written into
``.tmp-step_...`` and renamed when complete, so a crash mid-write never damages the previous one; only the
newest ``keep_last`` are kept. A checkpoint damaged later (a disk that filled up, a file cut short by a copy)
fails its manifest, and whatever loads a run falls back to the newest checkpoint that verifies, saying which
one it skipped and why.

Everything that reads a trained model back goes through here, whichever folder a learner points at: a run's
output folder (its newest checkpoint), one checkpoint, or a Hugging Face folder written by ``export``.
Weights are read from safetensors only, so loading a model never runs code from a file.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from .corpus import file_digest
from .device import precision_dtype
from .errors import RunError
from .hf import export_hf, load_hf
from .minimind_format import load_minimind_pth
from .model import MiniMind, ModelConfig
from .run_folder import is_run_folder
from .tokenizer import load_tokenizer, minimind_tokenizer_dir

MANIFEST = "manifest.json"


def clean_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter names as the bare model has them: no ``_orig_mod.`` (torch.compile), no ``module.`` (DDP)."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in ("_orig_mod.", "module."):
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def _step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of interrupted writes are skipped)."""
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / "state.pt").exists()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def _write_manifest(folder: Path) -> None:
    files = {p.name: {"bytes": p.stat().st_size, "blake2b": file_digest(p)} for p in sorted(folder.iterdir())}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def verify_checkpoint(folder: str | os.PathLike) -> str | None:
    """Why the checkpoint in ``folder`` cannot be trusted (a file missing, cut short or changed since it was
    written), or None when every file matches its manifest. A checkpoint without a manifest is not checked.
    Hashes come from :func:`~minimind_edu.corpus.file_digest`, computed once per process while a file's size
    and time are unchanged, so resolving a run and then loading its checkpoint reads the files once."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        return None
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return f"its {MANIFEST} is unreadable"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size:,} bytes, {expected['bytes']:,} were written (cut short?)"
        if file_digest(path) != expected["blake2b"]:
            return f"{name} has changed since it was written (corrupted)"
    return None


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run that verifies (see :func:`verify_checkpoint`), or None when the run has
    none at all. Damaged ones are skipped with a note on stderr; when every one is damaged, :class:`RunError`."""
    ckpts = list_checkpoints(out_dir)
    skipped = []
    for ckpt in reversed(ckpts):
        reason = verify_checkpoint(ckpt)
        if reason is None:
            return ckpt
        print(f"note: skipping checkpoint {ckpt}: {reason}", file=sys.stderr)
        skipped.append(f"{ckpt.name} ({reason})")
    if skipped:
        raise RunError(f"{out_dir}: no usable checkpoint: {'; '.join(skipped)}")
    return None


def _fsync_dir_files(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _write_state(state: dict, path: Path) -> None:
    # A function of its own so that tests/test_train.py can make it die mid-checkpoint.
    torch.save(state, path)


def save_checkpoint_dir(out_dir: Path, step: int, model: MiniMind, state: dict, configs: dict,
                        tokenizer_dir: Path | None, keep_last: int, weights: dict | None = None) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then one rename) and prune old ones.
    ``weights``: the model's whole state dict when ``model`` itself holds only a shard of it (FSDP)."""
    folder = out_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".tmp-*"):  # left by a run killed mid-write: never loadable, so remove
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder / f".tmp-{_step_dir_name(step)}-{os.getpid()}"
    tmp.mkdir()
    weights = clean_state_dict(weights if weights is not None else model.state_dict())
    if model.config.tie_word_embeddings:
        # the same tensor as embed_tokens.weight: safetensors refuses shared storage, and loading re-ties it
        weights.pop("lm_head.weight", None)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(configs, indent=1, ensure_ascii=False))
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (tokenizer_dir / name).exists():
                shutil.copyfile(tokenizer_dir / name, tmp / name)
    _write_state(state, tmp / "state.pt")
    _write_manifest(tmp)  # last: a folder with a manifest that matches is complete
    _fsync_dir_files(tmp)
    final = folder / _step_dir_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself if it holds ``model.safetensors``, else the newest checkpoint of the run in ``path``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such folder; give a run's --out folder or one of its checkpoints")
    if (path / "model.safetensors").exists():
        reason = verify_checkpoint(path)
        if reason is not None:
            raise RunError(f"{path}: {reason}; use an earlier checkpoint of the run in {path.parent}")
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path}: no checkpoint here (expected model.safetensors or checkpoints/step_*/); "
                                "train first with `minimind-edu pretrain --out <folder>`")
    return latest


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> MiniMind:
    """A trained model from a checkpoint folder or a run's ``out_dir`` (its newest checkpoint), in eval mode.

    Only ``config.json`` and ``model.safetensors`` are read: no pickle, so no code from the file runs.
    """
    ckpt = resolve_checkpoint(path)
    configs = json.loads((ckpt / "config.json").read_text())
    model = MiniMind(ModelConfig.from_dict(configs["model"]))
    weights = load_file(str(ckpt / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    allowed_missing = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise ValueError(f"{ckpt}: weights do not match the config: missing {sorted(set(missing) - allowed_missing)}, "
                         f"unexpected {sorted(unexpected)}")
    broken = [name for name, w in weights.items() if w.is_floating_point() and not torch.isfinite(w).all()]
    if broken:
        raise RunError(f"{ckpt}: {len(broken)} weight tensors hold NaN or infinity ({', '.join(broken[:2])}, ...): "
                       "the run had diverged; use an earlier checkpoint")
    return model.to(device).eval()


def is_hf_folder(path: Path) -> bool:
    """True for a folder written by ``export`` or by MiniMind (a Hugging Face config), not a training checkpoint."""
    config = path / "config.json"
    if not config.exists():
        return False
    fields = json.loads(config.read_text(encoding="utf-8"))
    return "architectures" in fields or fields.get("model_type") == "minimind"


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu",
                 tokenizer: str | os.PathLike | None = None) -> tuple[MiniMind, Tokenizer]:
    """``(model, tokenizer)``, ready for :func:`minimind_edu.generate.stream_text`, from a run's folder (its
    newest checkpoint), a checkpoint folder, a folder written by ``export`` or by MiniMind, or MiniMind's ``.pth``
    state dict (:mod:`~minimind_edu.minimind_format`). ``tokenizer``: a tokenizer folder to use instead of the
    one beside the weights; for a ``.pth`` (which has none) the default is MiniMind2's shipped tokenizer."""
    if Path(path).suffix in (".pth", ".pt") and not Path(path).is_dir():
        model = load_minimind_pth(path).to(device).eval()
        return model, load_tokenizer(tokenizer if tokenizer is not None else minimind_tokenizer_dir())
    folder = resolve_checkpoint(path)
    model = load_hf(folder).to(device).eval() if is_hf_folder(folder) else load_model(folder, device)
    if tokenizer is not None:
        return model, load_tokenizer(tokenizer)
    if not (folder / "tokenizer.json").exists():
        trained_with = ""
        if (folder / "config.json").exists():
            trained_with = json.loads((folder / "config.json").read_text()).get("tokenizer") or ""
        raise FileNotFoundError(
            f"{folder} has no tokenizer.json; copy in the tokenizer the model was trained with"
            + (f" (its config names {trained_with})" if trained_with else "")
            + ": a newly trained tokenizer would give the model different ids")
    return model, load_tokenizer(folder)


def export_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "fp32") -> Path:
    """Write a training checkpoint (or a run's newest) as a Hugging Face folder, tokenizer included."""
    folder = resolve_checkpoint(path)
    if Path(out_dir).resolve() == folder.resolve():
        raise ValueError(f"{out_dir}: that is the checkpoint being exported; give another output folder")
    if is_run_folder(out_dir) or Path(out_dir).resolve().parent.name == "checkpoints":
        raise ValueError(f"{out_dir}: that is a training run's folder; export into a new folder (an export "
                         "there would be what `generate` loads from the run)")
    model = load_model(folder).to(precision_dtype(dtype))
    tokenizer_dir = folder if (folder / "tokenizer.json").exists() else None
    return export_hf(model, out_dir, tokenizer_dir=tokenizer_dir)
