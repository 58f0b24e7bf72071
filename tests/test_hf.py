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
