"""MiniMind's own released weights, read into the course's model: its ``.pth`` state dicts and its HF folders.

MiniMind (github.com/jingyaogong/minimind) publishes two kinds of files, and the course's
:class:`~minimind_edu.model.MiniMind` is built to hold either without conversion, because its parameter names
are MiniMind's own less the ``model.`` prefix:

* ``.pth`` files such as ``pretrain_512.pth`` or ``full_sft_512.pth``: ``torch.save(model.state_dict())`` of
  ``MiniMindForCausalLM`` (names ``model.embed_tokens.weight``, ``model.layers.N.self_attn.q_proj.weight``,
  ``model.layers.N.mlp.gate.weight``, ``model.layers.N.mlp.experts.N.gate_proj.weight``,
  ``model.layers.N.mlp.shared_experts.N.up_proj.weight``, ``lm_head.weight``), sometimes with a
  ``_orig_mod.`` (``torch.compile``) or ``module.`` (DDP) prefix and sometimes in half precision.
  A state dict has no config, so the sizes are read from the tensors' shapes; two things shapes cannot tell
  are the number of attention heads (every released MiniMind has 8: pass ``num_heads`` otherwise) and, for a
  mixture of experts, how many experts each token uses (MiniMind2-MoE, with shared experts: 2; MiniMind3-MoE,
  without: 1), so give ``config`` (MiniMind's ``config.json`` as a dict) when yours differs.
* Hugging Face folders saved by MiniMind (``config.json`` with ``"model_type": "minimind"`` and
  ``model.safetensors``): :func:`minimind_edu.hf.load_hf` reads them with :func:`config_from_minimind`, which
  knows both generations' field names: MiniMind2 (``n_routed_experts``, ``n_shared_experts``,
  ``aux_loss_alpha``, ``seq_aux``) and MiniMind3 (``num_experts``, ``moe_intermediate_size``, ``head_dim``,
  ``router_aux_loss_coef``, q/k norms in every attention).

Only tensors are read: ``torch.load(weights_only=True)`` refuses a pickle that would run code. A file whose
names or shapes do not fit is refused with the first key that differs and what to do.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from .model import MiniMind, ModelConfig

PREFIXES = ("_orig_mod.", "module.")  # torch.compile's and DistributedDataParallel's wrappers
MINIMIND2_KEYS = ("n_routed_experts", "n_shared_experts", "aux_loss_alpha", "seq_aux", "scoring_func")
MINIMIND3_KEYS = ("num_experts", "moe_intermediate_size", "head_dim", "router_aux_loss_coef")


class MiniMindFormatError(ValueError):
    """MiniMind weights or config that the course's model cannot hold; the message names the key."""


def course_state_dict(weights: dict[str, torch.Tensor], source: str = "weights") -> dict[str, torch.Tensor]:
    """MiniMind's parameter names -> the course's: wrapper prefixes and ``model.`` dropped; ``lm_head.weight``
    kept only when it is not the embedding (MiniMind ties them unless ``tie_word_embeddings`` is false)."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise MiniMindFormatError(f"{source}: {name!r} is a {type(tensor).__name__}, not a tensor; "
                                      "expected a plain state_dict (torch.save(model.state_dict(), path))")
        while name.startswith(PREFIXES):
            name = name.split(".", 1)[1]
        state[name.removeprefix("model.")] = tensor
    if "embed_tokens.weight" not in state and "lm_head.weight" in state:
        state["embed_tokens.weight"] = state["lm_head.weight"]  # tied, and saved under the head's name only
    head, embedding = state.get("lm_head.weight"), state.get("embed_tokens.weight")
    if head is not None and embedding is not None and torch.equal(head, embedding):
        del state["lm_head.weight"]  # the same matrix twice: the course's model ties them
    return state


def _layers(state: dict[str, torch.Tensor]) -> int:
    return 1 + max((int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))), default=-1)


def _count(state: dict[str, torch.Tensor], part: str) -> int:
    return len({m.group(1) for k in state if (m := re.match(rf"layers\.0\.mlp\.{part}\.(\d+)\.", k))})


def config_from_state_dict(state: dict[str, torch.Tensor], num_heads: int = 8, source: str = "weights",
                           **overrides) -> ModelConfig:
    """The :class:`ModelConfig` of a course-named state dict, from its tensors' shapes (see the module docstring
    for the two settings shapes cannot tell); ``overrides`` set fields directly."""
    if "embed_tokens.weight" not in state or "layers.0.self_attn.k_proj.weight" not in state:
        some = ", ".join(sorted(state)[:3])
        raise MiniMindFormatError(f"{source}: no model.embed_tokens.weight or model.layers.0.self_attn.k_proj.weight "
                                  f"(its keys begin {some}): this is not a MiniMind state dict")
    vocab, hidden = state["embed_tokens.weight"].shape
    if hidden % num_heads:
        raise MiniMindFormatError(f"{source}: hidden size {hidden} is not divisible by num_heads={num_heads}; "
                                  "pass the num_heads the model was trained with")
    head_dim = hidden // num_heads
    kv_out = state["layers.0.self_attn.k_proj.weight"].shape[0]
    num_experts, shared = _count(state, "experts"), _count(state, "shared_experts")
    ffn = "layers.0.mlp.experts.0.up_proj.weight" if num_experts else "layers.0.mlp.up_proj.weight"
    if ffn not in state:
        raise MiniMindFormatError(f"{source}: no model.{ffn}: not a MiniMind state dict")
    qk_norm = "layers.0.self_attn.q_norm.weight" in state  # MiniMind3 normalises q and k; MiniMind2 does not
    fields = dict(vocab_size=vocab, hidden_size=hidden, num_layers=_layers(state), num_heads=num_heads,
                  num_kv_heads=kv_out // head_dim, intermediate_size=state[ffn].shape[0], qk_norm=qk_norm,
                  rms_norm_eps=1e-6 if qk_norm else 1e-5, tie_word_embeddings="lm_head.weight" not in state)
    if num_experts:  # MiniMind2-MoE (shared experts): top-2, loss per sequence; MiniMind3-MoE: top-1
        fields.update(num_experts=num_experts, shared_experts=shared, experts_per_token=2 if shared else 1,
                      aux_loss_per_sequence=bool(shared),
                      aux_loss_coef=0.01 if shared else 5e-4)
    fields.update(overrides)
    return ModelConfig(**fields)


def config_from_minimind(config: dict, source: str = "config.json", **overrides) -> ModelConfig:
    """The :class:`ModelConfig` of MiniMind's ``config.json`` (MiniMind2 or MiniMind3 field names)."""
    if config.get("inference_rope_scaling") or config.get("rope_scaling"):
        raise MiniMindFormatError(f"{source}: inference_rope_scaling / rope_scaling (YaRN) is on, which the course's "
                                  "model does not implement; set it to false in config.json to load the weights")
    if config.get("hidden_act", "silu") != "silu":
        raise MiniMindFormatError(f"{source}: hidden_act={config['hidden_act']!r}; the course's model uses 'silu'")
    try:
        hidden, heads = int(config["hidden_size"]), int(config.get("num_attention_heads", 8))
        fields = dict(vocab_size=int(config.get("vocab_size", 6400)), hidden_size=hidden,
                      num_layers=int(config["num_hidden_layers"]), num_heads=heads,
                      num_kv_heads=int(config.get("num_key_value_heads") or heads))
    except KeyError as err:
        raise MiniMindFormatError(f"{source}: missing required field {err.args[0]!r}") from None
    minimind3 = any(k in config for k in MINIMIND3_KEYS) and not any(k in config for k in MINIMIND2_KEYS)
    if config.get("head_dim", hidden // heads) != hidden // heads:
        raise MiniMindFormatError(f"{source}: head_dim={config['head_dim']} is not hidden_size / num_attention_heads "
                                  f"= {hidden // heads}, which the course's model assumes")
    intermediate = config.get("intermediate_size")
    if intermediate is None and minimind3:
        intermediate = math.ceil(hidden * math.pi / 64) * 64  # MiniMind3's rule; None gives MiniMind2's 8/3
    fields.update(intermediate_size=intermediate, rope_theta=float(config.get("rope_theta", 1e6)),
                  rms_norm_eps=float(config.get("rms_norm_eps", 1e-6 if minimind3 else 1e-5)),
                  max_position_embeddings=int(config.get("max_position_embeddings", 32768)),
                  tie_word_embeddings=bool(config.get("tie_word_embeddings", True)), qk_norm=minimind3,
                  bos_token_id=int(config.get("bos_token_id", 1)), eos_token_id=int(config.get("eos_token_id", 2)))
    if config.get("use_moe"):
        top_k = int(config.get("num_experts_per_tok", 1 if minimind3 else 2))
        if minimind3:
            moe_size = config.get("moe_intermediate_size", intermediate)
            if moe_size not in (None, intermediate):
                raise MiniMindFormatError(f"{source}: moe_intermediate_size={moe_size} differs from intermediate_size="
                                          f"{intermediate}; the course's experts all have intermediate_size")
            fields.update(num_experts=int(config.get("num_experts", 4)), shared_experts=0,
                          aux_loss_coef=float(config.get("router_aux_loss_coef", 5e-4)),
                          norm_topk_prob=bool(config.get("norm_topk_prob", True)))
        else:  # MiniMind2 renormalises the chosen experts only when it chooses more than one
            fields.update(num_experts=int(config.get("n_routed_experts", 4)),
                          shared_experts=int(config.get("n_shared_experts", 1)),
                          aux_loss_coef=float(config.get("aux_loss_alpha", 0.01)),
                          aux_loss_per_sequence=bool(config.get("seq_aux", True)),
                          norm_topk_prob=bool(config.get("norm_topk_prob", True)) and top_k > 1)
        fields["experts_per_token"] = top_k
    fields.update(overrides)
    return ModelConfig(**fields)


def model_from_state(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str = "weights",
                     dtype: torch.dtype | None = torch.float32) -> MiniMind:
    """A :class:`MiniMind` of ``cfg`` holding ``state`` (course names); every missing, unexpected or misshapen
    tensor is refused by name. ``dtype=None`` keeps the file's precision (half, for some MiniMind files)."""
    model = MiniMind(cfg)
    expected = model.state_dict()
    if cfg.tie_word_embeddings:
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise MiniMindFormatError(
            f"{source} does not fit MiniMind({cfg.hidden_size} hidden, {cfg.num_layers} layers, "
            f"{cfg.num_experts} experts): missing {['model.' + k for k in missing[:3]]}, unexpected "
            f"{['model.' + k for k in unexpected[:3]]}; is it a MiniMind model (jingyaogong/minimind)? Give its "
            "config.json, or num_heads, if its settings are not MiniMind's defaults")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise MiniMindFormatError(
                f"{source}: model.{name} has shape {tuple(tensor.shape)}, the config gives "
                f"{tuple(expected[name].shape)}; the config.json (or num_heads) does not describe these weights")
    model.load_state_dict({k: v.to(expected[k].dtype if dtype is None else dtype) for k, v in state.items()},
                          strict=False)  # lm_head is missing on purpose when tied
    if dtype is None and len({t.dtype for t in state.values()}) == 1:
        model.to(next(iter(state.values())).dtype)
    return model.eval()


def load_minimind_pth(path: str | os.PathLike, num_heads: int = 8, config: dict | None = None,
                      dtype: torch.dtype | None = torch.float32) -> MiniMind:
    """MiniMind's ``.pth`` state dict (e.g. ``pretrain_512.pth``) as a course :class:`MiniMind` (float32 by
    default). Sizes come from the shapes; ``config`` (MiniMind's config.json as a dict) overrides them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; download a MiniMind .pth (e.g. pretrain_512.pth) first")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an UnpicklingError for code, a RuntimeError for a broken zip
        raise MiniMindFormatError(f"{path}: not a plain tensor state dict that can be loaded safely ({err}); "
                                  "only torch.save(model.state_dict()) files are read") from None
    if isinstance(weights, dict) and isinstance(weights.get("model"), dict):
        weights = weights["model"]  # a training checkpoint that wraps the weights
    if not isinstance(weights, dict):
        raise MiniMindFormatError(f"{path}: holds a {type(weights).__name__}, not a state dict")
    state = course_state_dict(weights, str(path))
    cfg = config_from_minimind(config, str(path)) if config else config_from_state_dict(state, num_heads, str(path))
    return model_from_state(cfg, state, str(path), dtype)
