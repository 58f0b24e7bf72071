"""Checkpoints: a folder of safetensors weights + a weights-only state file, written atomically.

Layout of ``out_dir/checkpoints/step_00000123/``: ``model.safetensors`` (weights: plain tensor data, no
code), ``state.pt`` (optimizer, GradScaler, step, data position, RNG states: tensors and plain containers,
read back with ``torch.load(weights_only=True)``), ``config.json`` (model + training configs) and the
tokenizer files. A checkpoint is written into ``.tmp-step_...`` and renamed when complete, so a crash
mid-write never damages the previous one; only the newest ``keep_last`` are kept.

Everything that reads a trained model back goes through here, whichever folder a learner points at: a run's
output folder (its newest checkpoint), one checkpoint, or a Hugging Face folder written by ``export``.
Weights are read from safetensors only, so loading a model never runs code from a file.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from .device import precision_dtype
from .hf import export_hf, load_hf
from .model import MiniMind, ModelConfig
from .tokenizer import load_tokenizer


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


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none."""
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def _fsync_dir_files(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _write_state(state: dict, path: Path) -> None:
    # A function of its own so that tests/test_train.py can make it die mid-checkpoint.
    torch.save(state, path)


def save_checkpoint_dir(out_dir: Path, step: int, model: MiniMind, state: dict, configs: dict,
                        tokenizer_dir: Path | None, keep_last: int) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then one rename) and prune old ones."""
    folder = out_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".tmp-*"):  # left by a run killed mid-write: never loadable, so remove
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder / f".tmp-{_step_dir_name(step)}-{os.getpid()}"
    tmp.mkdir()
    weights = clean_state_dict(model.state_dict())
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
    return model.to(device).eval()


def is_hf_folder(path: Path) -> bool:
    """True for a folder written by ``export`` (a Hugging Face config), not a training checkpoint."""
    config = path / "config.json"
    return config.exists() and "architectures" in json.loads(config.read_text(encoding="utf-8"))


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MiniMind, Tokenizer]:
    """``(model, tokenizer)``, ready for :func:`minimind_edu.generate.stream_text`, from a run's folder (its
    newest checkpoint), a checkpoint folder, or a folder written by ``export``."""
    folder = resolve_checkpoint(path)
    model = load_hf(folder).to(device).eval() if is_hf_folder(folder) else load_model(folder, device)
    return model, load_tokenizer(folder)


def export_checkpoint(path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "fp32") -> Path:
    """Write a training checkpoint (or a run's newest) as a Hugging Face folder, tokenizer included."""
    folder = resolve_checkpoint(path)
    if Path(out_dir).resolve() == folder.resolve():
        raise ValueError(f"{out_dir}: that is the checkpoint being exported; give another output folder")
    model = load_model(folder).to(precision_dtype(dtype))
    tokenizer_dir = folder if (folder / "tokenizer.json").exists() else None
    return export_hf(model, out_dir, tokenizer_dir=tokenizer_dir)
