"""Export a MiniMind to the Hugging Face format, and read such a folder back.

A dense MiniMind *is* a Llama (or, with QK-norm, a Qwen3): same RMSNorm, same rotate-half RoPE, same
grouped-query attention and SwiGLU, and our parameter names already follow theirs. Exporting is therefore a
``config.json`` in their vocabulary plus the weights under a ``model.`` prefix in ``model.safetensors``:

    export_hf(model, "out/minimind-hf", tokenizer_dir=default_tokenizer_dir())
    AutoModelForCausalLM.from_pretrained("out/minimind-hf")   # -> LlamaForCausalLM
    AutoTokenizer.from_pretrained("out/minimind-hf")

``load_hf`` reads such a folder (or one written by ``transformers``' own ``save_pretrained`` for a Llama or
Qwen3 of this shape, or by MiniMind itself: ``"model_type": "minimind"``, see
:mod:`~minimind_edu.minimind_format`) back into a :class:`~minimind_edu.model.MiniMind`. Only safetensors are read: a
pickled ``pytorch_model.bin`` can run code when loaded, so it is refused. ``transformers`` is not needed for
either direction; the tests use it to prove the logits agree.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import minimind_format
from .model import MiniMind, ModelConfig

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Files that make up a tokenizer folder (``save_tokenizer`` writes the first two; the rest are optional).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "vocab.json", "merges.txt",
)
SUPPORTED_MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def hf_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """The ``config.json`` of the Llama (no QK-norm) or Qwen3 (QK-norm) model equal to ``cfg``."""
    if cfg.num_experts:
        raise ValueError(
            f"a mixture-of-experts MiniMind (num_experts={cfg.num_experts}) cannot be exported: no architecture "
            "in transformers has MiniMind's MoE block (softmax router, top-k renormalised, plus shared experts "
            "added to every token without a gate). Qwen2-MoE gates its shared expert with a sigmoid, Qwen3-MoE "
            "has no shared experts, so either would compute something else. Export a dense preset instead."
        )
    model_type = "qwen3" if cfg.qk_norm else "llama"
    theta = float(cfg.rope_theta)
    config = {
        "architectures": [SUPPORTED_MODEL_TYPES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        # transformers 5 reads RoPE settings from `rope_parameters`; 4.x reads the top-level `rope_theta`.
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "rope_theta": theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "initializer_range": 0.02,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
        "torch_dtype": str(dtype).removeprefix("torch."),  # the same, under its transformers 4.x name
    }
    if model_type == "llama":
        config["mlp_bias"] = False
    else:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
    return config


def export_hf(
    model: MiniMind, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``generation_config.json`` (and the tokenizer files
    from ``tokenizer_dir``, when given) so that ``transformers``' Auto classes load the folder."""
    cfg = model.config
    first = next(model.parameters())
    config = hf_config(cfg, first.dtype)
    tokenizer_files: list[Path] = []
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        if not (tokenizer_dir / "tokenizer.json").is_file():
            raise FileNotFoundError(
                f"tokenizer_dir={tokenizer_dir} has no tokenizer.json; pass a folder written by save_tokenizer "
                "(e.g. minimind_edu.tokenizer.default_tokenizer_dir()) or leave tokenizer_dir out"
            )
        tokenizer_files = [tokenizer_dir / n for n in TOKENIZER_FILES if (tokenizer_dir / n).is_file()]

    weights: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue  # the same matrix as the embedding; transformers re-ties it from the config flag
            weights[name] = tensor
        else:
            weights["model." + name] = tensor
    # safetensors wants each tensor contiguous, on the CPU, and sharing memory with no other.
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    for path in tokenizer_files:
        shutil.copyfile(path, out_dir / path.name)
    return out_dir


def config_from_hf(config: dict, source: str = "config.json", **overrides) -> ModelConfig:
    """The :class:`ModelConfig` of a Llama/Qwen3 ``config.json`` dict; raises if MiniMind cannot express it."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{source}: model_type={model_type!r} is not supported; load_hf reads 'llama' or 'qwen3' folders "
            "(what export_hf writes) and 'minimind' ones (saved by MiniMind)"
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    checks = {
        "rope_type": (rope_type, "default"),
        "hidden_act": (config.get("hidden_act", "silu"), "silu"),
        "attention_bias": (config.get("attention_bias", False), False),
        "mlp_bias": (config.get("mlp_bias", False), False),
        "use_sliding_window": (config.get("use_sliding_window", False), False),
    }
    for key, (value, wanted) in checks.items():
        if value != wanted:
            raise ValueError(f"{source}: {key}={value!r} is not supported by MiniMind (needs {wanted!r})")
    try:
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        fields = dict(
            vocab_size=config["vocab_size"],
            hidden_size=hidden,
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            intermediate_size=config["intermediate_size"],
        )
    except KeyError as err:
        raise ValueError(f"{source}: missing required field {err.args[0]!r}") from None
    head_dim = config.get("head_dim") or hidden // heads
    if head_dim * heads != hidden:
        raise ValueError(
            f"{source}: head_dim={head_dim} x num_attention_heads={heads} != hidden_size={hidden}; "
            "MiniMind's heads always split the hidden size exactly"
        )
    fields.update(
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=config.get("max_position_embeddings", 32768),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        qk_norm=model_type == "qwen3",
    )
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(config.get(key), int):
            fields[key] = config[key]
    fields.update(overrides)
    return ModelConfig(**fields)


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    single, index = directory / WEIGHTS_NAME, directory / INDEX_NAME
    if single.is_file():
        return load_file(str(single))
    if index.is_file():  # a sharded checkpoint, as save_pretrained writes for big models
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        weights: dict[str, torch.Tensor] = {}
        for shard in shards:
            weights.update(load_file(str(directory / shard)))
        return weights
    if (directory / "pytorch_model.bin").is_file():
        raise ValueError(
            f"{directory} holds only pytorch_model.bin (a pickle, which can run code when loaded); "
            "re-save it with safe_serialization=True to get model.safetensors"
        )
    raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}; write one with minimind_edu.hf.export_hf")


def load_hf(directory: str | os.PathLike, **overrides) -> MiniMind:
    """Read a folder written by :func:`export_hf` (or a Llama/Qwen3 ``save_pretrained`` folder of the same shape)
    into a MiniMind; ``overrides`` change config fields that the format does not store (e.g. ``attention="naive"``)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no config.json; is it a folder written by export_hf?")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") == "minimind":  # saved by MiniMind's own code: its names, its config keys
        state = minimind_format.course_state_dict(_read_weights(directory), str(directory / WEIGHTS_NAME))
        qk_norm = "layers.0.self_attn.q_norm.weight" in state  # MiniMind3 has q/k norms, MiniMind2 none
        cfg = minimind_format.config_from_minimind(config, str(config_path), **{"qk_norm": qk_norm, **overrides})
        return minimind_format.model_from_state(cfg, state, str(directory / WEIGHTS_NAME), dtype=None)
    cfg = config_from_hf(config, str(config_path), **overrides)
    weights = _read_weights(directory)
    state = {}
    for name, tensor in weights.items():
        if name.startswith("model."):
            state[name.removeprefix("model.")] = tensor
        elif name == "lm_head.weight":
            if not cfg.tie_word_embeddings:
                state[name] = tensor
        else:
            state[name] = tensor  # unknown: reported as unexpected below
    dtypes = {t.dtype for t in state.values()}
    model = MiniMind(cfg)
    expected = set(model.state_dict()) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{directory / WEIGHTS_NAME} does not match its config.json: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    try:
        model.load_state_dict(state, strict=False)  # lm_head is missing on purpose when tied
    except RuntimeError as err:  # a tensor's shape disagrees with config.json
        raise ValueError(f"{directory / WEIGHTS_NAME} does not match its config.json: {err}") from None
    return model
