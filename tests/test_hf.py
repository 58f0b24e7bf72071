"""Export to and load from the Hugging Face format: proof against transformers' own Llama / Qwen3 (the same
logits, the same greedy continuation), round trips, bf16, and clear refusals."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import transformers  # a test dependency (pyproject [test]): the reference implementation

from minimind_edu.generate import generate
from minimind_edu.hf import export_hf, hf_config, load_hf
from minimind_edu.model import MiniMind, ModelConfig, get_preset
from minimind_edu.tokenizer import default_tokenizer_dir, get_default_tokenizer

from weights import randomize

DENSE_REFERENCE_PRESETS = ["minimind2-small", "minimind2", "minimind3"]


def tiny(**overrides) -> ModelConfig:
    return replace(get_preset("tiny"), **overrides)


@pytest.mark.parametrize("name", DENSE_REFERENCE_PRESETS)
def test_hf_logits_match_and_round_trip(name, tmp_path):
    cfg = replace(get_preset(name), num_layers=2)  # full width, shrunk in depth for CI time
    model = randomize(MiniMind(cfg), seed=3)
    export_hf(model, tmp_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reference).__name__ == ("Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM")
    assert reference.num_parameters() == model.num_parameters()
    ids = torch.randint(0, cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids).logits
        theirs = reference(ids).logits
        assert ours.abs().max() > 1.0  # the comparison is not between near-zero numbers
        assert (ours - theirs).abs().max().item() < 1e-4
        back = load_hf(tmp_path)
        assert back.config == cfg
        assert torch.equal(back(ids).logits, ours)


def test_hf_untied_head_exports_and_loads(tmp_path):
    cfg = tiny(tie_word_embeddings=False, qk_norm=True)
    model = randomize(MiniMind(cfg), seed=4)
    export_hf(model, tmp_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 6400, (1, 20))
    with torch.no_grad():
        assert (model(ids).logits - reference(ids).logits).abs().max().item() < 1e-4
        assert torch.equal(load_hf(tmp_path)(ids).logits, model(ids).logits)
    assert not torch.equal(reference.lm_head.weight, reference.model.embed_tokens.weight)
    # a folder written by transformers itself reads back too
    reference.save_pretrained(tmp_path / "saved_by_transformers")
    with torch.no_grad():
        assert torch.equal(load_hf(tmp_path / "saved_by_transformers")(ids).logits, model(ids).logits)


def test_hf_export_keeps_bf16(tmp_path):
    model = randomize(MiniMind(tiny()), seed=6).to(torch.bfloat16)
    export_hf(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    back = load_hf(tmp_path)
    assert back.embed_tokens.weight.dtype == torch.bfloat16
    ours, theirs = model.state_dict(), back.state_dict()
    assert list(theirs) == list(ours)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_hf_folder_with_tokenizer_loads_with_auto_classes(tmp_path):
    tok = get_default_tokenizer()
    model = randomize(MiniMind(tiny()), seed=5, std=0.1)
    export_hf(model, tmp_path, tokenizer_dir=default_tokenizer_dir())
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    text = "Once upon a time, 床前明月光"
    ids = [1] + tok.encode(text).ids
    assert hf_tok(text)["input_ids"] == ids[1:]
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (1, 2, 0)
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (model(x).logits - hf_model(x).logits).abs().max().item() < 1e-4
        hf_new = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False)
    hf_new = hf_new[0, x.shape[1]:].tolist()
    if 2 in hf_new:  # transformers keeps the eos it stopped at; ours stops before it
        hf_new = hf_new[: hf_new.index(2)]
    assert generate(model, ids, max_new_tokens=12, temperature=0, eos_token_id=2) == hf_new
    assert hf_tok.decode(hf_new) == tok.decode(hf_new)


def test_hf_export_refuses_moe_and_load_refuses_bad_folders(tmp_path):
    moe = tiny(num_experts=4, experts_per_token=2, shared_experts=1)
    with pytest.raises(ValueError, match="mixture-of-experts.*cannot be exported"):
        export_hf(MiniMind(moe), tmp_path / "moe")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_hf(tmp_path / "missing")
    folder = export_hf(MiniMind(tiny()), tmp_path / "ok")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="config.json: model_type='gpt2' is not supported"):
        load_hf(folder)
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        load_hf(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="does not match its config.json: missing"):
        load_hf(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="pickle"):
        load_hf(folder)


def test_hf_config_fields():
    config = hf_config(get_preset("minimind3"))
    assert config["model_type"] == "qwen3" and config["head_dim"] == 96 and config["rms_norm_eps"] == 1e-6
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e6}
    assert config["intermediate_size"] == 2432 and config["num_key_value_heads"] == 4
    assert hf_config(get_preset("minimind2-small"))["model_type"] == "llama"


# --- MiniMind's own files: .pth state dicts and folders saved by MiniMind (minimind_edu.minimind_format) -------
def minimind_names(model: MiniMind, prefix: str = "") -> dict[str, torch.Tensor]:
    """``model``'s weights under MiniMindForCausalLM's names, as its ``state_dict()`` has them (tied head twice)."""
    state = {f"{prefix}model.{k}": v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    tied = model.config.tie_word_embeddings
    state[f"{prefix}lm_head.weight"] = state[f"{prefix}model.embed_tokens.weight"] if tied else \
        model.lm_head.weight.detach().clone()
    return state


MINIMIND_CASES = {  # (course config, num_heads to pass, wrapper prefix, half precision)
    "minimind2-small": (replace(get_preset("minimind2-small"), num_layers=2), 8, "_orig_mod.", True),
    "minimind3-moe": (tiny(qk_norm=True, rms_norm_eps=1e-6, num_experts=4, experts_per_token=1, shared_experts=0,
                           aux_loss_coef=5e-4, max_position_embeddings=32768), 4, "module.", False),
    "minimind2-moe": (tiny(num_experts=4, experts_per_token=2, shared_experts=1, aux_loss_per_sequence=True,
                           aux_loss_coef=0.01, max_position_embeddings=32768), 4, "", False),
}


@pytest.mark.parametrize("name", MINIMIND_CASES)
def test_minimind_pth_loads_with_the_same_logits(name, tmp_path):
    from minimind_edu.minimind_format import load_minimind_pth

    cfg, heads, prefix, half = MINIMIND_CASES[name]
    model = randomize(MiniMind(cfg), seed=5).eval()
    state = minimind_names(model, prefix)
    if half:  # MiniMind's newer scripts save fp16; the weights it holds are then the fp16-rounded ones
        state = {k: v.half() for k, v in state.items()}
        with torch.no_grad():
            for p in model.parameters():  # the weights only: .half() would round the RoPE tables as well
                p.copy_(p.half().float())
    torch.save(state, tmp_path / "pretrain_512.pth")
    back = load_minimind_pth(tmp_path / "pretrain_512.pth", num_heads=heads)
    assert back.config == cfg
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)


def minimind_config(cfg: ModelConfig, generation: int) -> dict:
    """A config.json as MiniMind's own MiniMindConfig.save_pretrained writes it (field names per generation)."""
    config = {"architectures": ["MiniMindForCausalLM"], "model_type": "minimind", "hidden_size": cfg.hidden_size,
              "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
              "num_key_value_heads": cfg.num_kv_heads, "vocab_size": cfg.vocab_size, "rope_theta": cfg.rope_theta,
              "rms_norm_eps": cfg.rms_norm_eps, "max_position_embeddings": cfg.max_position_embeddings,
              "hidden_act": "silu", "dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "flash_attn": True,
              "use_moe": bool(cfg.num_experts), "num_experts_per_tok": cfg.experts_per_token,
              "norm_topk_prob": cfg.norm_topk_prob, "inference_rope_scaling": False, "rope_scaling": None}
    if generation == 2:
        config.update(intermediate_size=None, n_routed_experts=cfg.num_experts or 4,
                      n_shared_experts=cfg.shared_experts, scoring_func="softmax", aux_loss_alpha=cfg.aux_loss_coef,
                      seq_aux=True)
    else:
        config.update(intermediate_size=cfg.intermediate_size, head_dim=cfg.head_dim, num_experts=cfg.num_experts or 4,
                      moe_intermediate_size=cfg.intermediate_size, router_aux_loss_coef=cfg.aux_loss_coef,
                      tie_word_embeddings=cfg.tie_word_embeddings)
    return config


def write_minimind_folder(model: MiniMind, folder, generation: int) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = minimind_names(model)
    if model.config.tie_word_embeddings:
        del state["lm_head.weight"]  # save_pretrained stores a tied matrix once
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(minimind_config(model.config, generation), indent=2))


@pytest.mark.parametrize("generation", [2, 3])
def test_minimind_hf_folder_loads_and_generates_like_the_course_model(generation, tmp_path):
    import shutil

    from minimind_edu.checkpoint import load_trained
    from minimind_edu.tokenizer import minimind_tokenizer_dir

    cfg = (replace(get_preset("minimind2-small"), num_layers=2) if generation == 2 else
           tiny(qk_norm=True, rms_norm_eps=1e-6, tie_word_embeddings=False))
    model = randomize(MiniMind(cfg), seed=6).eval()
    folder = tmp_path / "MiniMind2-small"
    write_minimind_folder(model, folder, generation)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(minimind_tokenizer_dir() / name, folder / name)
    back, tokenizer = load_trained(folder)
    assert back.config == cfg
    prompt = [1, *tokenizer.encode("Once upon a time", add_special_tokens=False).ids]
    assert generate(back, prompt, max_new_tokens=6, temperature=0) == generate(model, prompt, max_new_tokens=6,
                                                                               temperature=0)


def test_generate_command_reads_a_minimind_pth(tmp_path, capsys):
    from minimind_edu.checkpoint import load_trained
    from minimind_edu.cli import main

    cfg = replace(get_preset("minimind2-small"), num_layers=1)
    model = randomize(MiniMind(cfg), seed=7).eval()
    torch.save(minimind_names(model), tmp_path / "full_sft_512.pth")
    back, tokenizer = load_trained(tmp_path / "full_sft_512.pth")
    assert tokenizer.token_to_id("<|im_start|>") == 1 and tokenizer.get_vocab_size() == 6400  # MiniMind2's own
    prompt = [1, *tokenizer.encode("床前明月光", add_special_tokens=False).ids]
    assert generate(back, prompt, max_new_tokens=5, temperature=0) == generate(model, prompt, max_new_tokens=5,
                                                                               temperature=0)
    assert main(["generate", str(tmp_path / "full_sft_512.pth"), "--prompt", "Once", "--max-new-tokens", "4",
                 "--temperature", "0"]) == 0
    assert "Once" in capsys.readouterr().out


def test_minimind_mismatches_are_refused_by_name(tmp_path):
    from minimind_edu.minimind_format import MiniMindFormatError, load_minimind_pth

    model = randomize(MiniMind(tiny()), seed=8)
    state = minimind_names(model)
    state["model.layers.1.self_attn.k_proj.weight"] = state["model.layers.1.self_attn.k_proj.weight"][:16]
    torch.save(state, tmp_path / "bad_shape.pth")
    with pytest.raises(MiniMindFormatError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight has shape \(16, 64\)"):
        load_minimind_pth(tmp_path / "bad_shape.pth", num_heads=4)
    state = minimind_names(model)
    del state["model.layers.1.post_attention_layernorm.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(MiniMindFormatError, match=r"missing \['model\.layers\.1\.post_attention_layernorm\.weight'\]"):
        load_minimind_pth(tmp_path / "missing.pth", num_heads=4)
    torch.save({"embed_tokens": [1, 2]}, tmp_path / "not_tensors.pth")
    with pytest.raises(MiniMindFormatError, match="not a tensor"):
        load_minimind_pth(tmp_path / "not_tensors.pth")
    folder = tmp_path / "wrong_config"
    write_minimind_folder(model, folder, 2)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    with pytest.raises(MiniMindFormatError, match=r"model\.embed_tokens\.weight has shape \(6400, 64\)"):
        load_hf(folder)
    (folder / "config.json").write_text(json.dumps({**config, "inference_rope_scaling": True}))
    with pytest.raises(MiniMindFormatError, match="YaRN"):
        load_hf(folder)
