"""The model: exact sizes, clear errors, attention paths that agree, the KV cache, MoE routing, the loss,
sampling filters, the ``presets`` command, and proof against Hugging Face's Llama / Qwen3."""
from __future__ import annotations

from dataclasses import replace

import json
import math

import pytest
import torch
import torch.nn.functional as F
import transformers  # a test dependency (pyproject [test]): the reference implementation

from minimind_edu import cli
from minimind_edu.generate import filter_logits, generate
from minimind_edu.hf import export_hf, hf_config, load_hf
from minimind_edu.data import IGNORE_INDEX
from minimind_edu.model import (

    PRESETS,
    MiniMind,
    ModelConfig,
    MoEFeedForward,
    count_parameters,
    get_preset,
)

# Exact parameter counts (MiniMind's "26M", "104M", "145M" and MiniMind3).
EXPECTED_PARAMETERS = {
    "minimind2-small": 25_829_888,
    "minimind2": 104_030_976,
    "minimind2-moe": 145_029_760,
    "minimind3": 63_912_192,
    "course-cpu": 4_458_752,
    "tiny": 508_224,
}
DENSE_REFERENCE_PRESETS = ["minimind2-small", "minimind2", "minimind3"]


def randomize(model: MiniMind, seed: int = 0, std: float = 0.05) -> MiniMind:
    """Weights far from the init (norm gains too), so a wrong eps, gain or rotation would show in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny(**overrides) -> ModelConfig:
    return replace(get_preset("tiny"), **overrides)


# --- sizes ------------------------------------------------------------------------------------------------


def test_every_preset_has_a_pinned_count():
    assert set(EXPECTED_PARAMETERS) == set(PRESETS)


@pytest.mark.parametrize("name", list(EXPECTED_PARAMETERS))
def test_preset_parameter_counts(name):
    cfg = get_preset(name)
    counts = count_parameters(cfg)
    assert counts["total"] == EXPECTED_PARAMETERS[name]
    with torch.device("meta"):  # shapes only: the 145M MoE costs no memory or init time
        model = MiniMind(cfg)
    assert model.num_parameters() == EXPECTED_PARAMETERS[name]
    # The breakdown agrees with the real modules, not only in total.
    assert counts["embedding"] == model.embed_tokens.weight.numel() == cfg.vocab_size * cfg.hidden_size
    block = model.layers[0]
    assert counts["per_block"] == sum(p.numel() for p in block.parameters())
    assert counts["attention_per_block"] == sum(p.numel() for p in block.self_attn.parameters())
    assert counts["mlp_per_block"] == sum(p.numel() for p in block.mlp.parameters())


def test_swiglu_sizes_follow_minimind_rules():
    assert get_preset("minimind2-small").intermediate_size == 1408  # 64 * ceil(8/3 * 512 / 64)
    assert get_preset("minimind2").intermediate_size == 2048
    assert get_preset("minimind3").intermediate_size == 2432  # 64 * ceil(768 * pi / 64)
    assert get_preset("minimind3").head_dim == 96


def test_tied_embedding_is_one_matrix_and_counted_once():
    model = MiniMind(tiny())
    assert model.lm_head.weight is model.embed_tokens.weight
    untied = MiniMind(tiny(tie_word_embeddings=False))
    assert untied.num_parameters() == model.num_parameters() + 6400 * 64
    assert count_parameters(untied.config)["total"] == untied.num_parameters()


# --- clear errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(hidden_size=100, num_heads=8), "not divisible by num_heads"),
        (dict(num_heads=8, num_kv_heads=3), "not divisible by num_kv_heads"),
        (dict(hidden_size=24, num_heads=8, num_kv_heads=8), "head_dim.*odd"),
        (dict(num_experts=2, experts_per_token=3), "experts_per_token=3 must be between 1 and num_experts=2"),
        (dict(attention="flash"), "attention must be"),
        (dict(num_layers=0), "num_layers must be at least 1"),
    ],
)
def test_impossible_configs_raise(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'gpt5'.*minimind2-small"):
        get_preset("gpt5")


def test_sequence_longer_than_max_positions_raises():
    model = MiniMind(tiny(max_position_embeddings=16)).eval()
    model(torch.zeros(1, 16, dtype=torch.long))  # exactly the limit is fine
    with pytest.raises(ValueError, match="17 tokens is longer than max_position_embeddings=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    past = model(torch.zeros(1, 10, dtype=torch.long), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="17 tokens"):  # the cached tokens count too
        model(torch.zeros(1, 7, dtype=torch.long), past_key_values=past)


# --- attention paths and the KV cache ----------------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"qk_norm": True, "num_kv_heads": 1}])
def test_sdpa_equals_naive_with_and_without_cache(extra):
    torch.manual_seed(0)
    sdpa = randomize(MiniMind(tiny(attention="sdpa", **extra)))
    naive = MiniMind(tiny(attention="naive", **extra)).eval()
    naive.load_state_dict(sdpa.state_dict())
    ids = torch.randint(0, 6400, (2, 24))
    with torch.no_grad():
        full = sdpa(ids).logits
        torch.testing.assert_close(naive(ids).logits, full, atol=1e-5, rtol=0)
        for model in (sdpa, naive):
            # prefill 10 tokens, then a chunk of 5, then one token at a time: each step must match the full pass
            out = model(ids[:, :10], use_cache=True)
            pieces, past = [out.logits], out.past_key_values
            for start, stop in [(10, 15)] + [(i, i + 1) for i in range(15, 24)]:
                out = model(ids[:, start:stop], past_key_values=past, use_cache=True)
                pieces.append(out.logits)
                past = out.past_key_values
            torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
            assert past[0][0].shape == (2, model.config.num_kv_heads, 24, 16)  # keys cached per KV head


def test_greedy_generation_with_cache_equals_without():
    torch.manual_seed(1)
    model = randomize(MiniMind(tiny()), std=0.1)
    prompt = [1, 400, 17, 2048]
    with_cache = generate(model, prompt, max_new_tokens=24, temperature=0, use_cache=True)
    without = generate(model, prompt, max_new_tokens=24, temperature=0, use_cache=False)
    assert with_cache == without
    assert len(with_cache) == 24 and len(set(with_cache)) > 1  # a real continuation, not one token repeated


def test_generation_stops_at_the_context_limit():
    model = MiniMind(tiny(max_position_embeddings=8))
    assert len(generate(model, [1, 5, 6], max_new_tokens=50, temperature=0)) == 5


# --- mixture of experts ---------------------------------------------------------------------------------------


def moe_config(**overrides) -> ModelConfig:
    return tiny(**{"num_experts": 4, "experts_per_token": 2, "shared_experts": 1, **overrides})


def test_each_token_goes_to_exactly_top_k_experts():
    torch.manual_seed(0)
    model = randomize(MiniMind(moe_config()))
    seen = {}
    for layer_i, layer in enumerate(model.layers):
        for e, expert in enumerate(layer.mlp.experts):
            expert.register_forward_hook(lambda m, inp, out, key=(layer_i, e): seen.__setitem__(key, inp[0].shape[0]))
    ids = torch.randint(0, 6400, (3, 11))
    model(ids)
    n_tokens = 3 * 11
    for layer_i, layer in enumerate(model.layers):
        idx = layer.mlp.last_topk_idx
        assert idx.shape == (n_tokens, 2)
        assert (idx[:, 0] != idx[:, 1]).all() and idx.min() >= 0 and idx.max() < 4
        # the experts really ran on top-k * tokens rows in total, each on the tokens routed to it
        rows = [seen.get((layer_i, e), 0) for e in range(4)]
        assert sum(rows) == n_tokens * 2
        assert rows == [int((idx == e).sum()) for e in range(4)]


def test_moe_output_is_the_weighted_sum_of_chosen_experts_plus_shared():
    torch.manual_seed(0)
    cfg = moe_config()
    moe = MoEFeedForward(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 5, 64)
    out = moe(x)
    flat = x.reshape(-1, 64)
    probs = F.softmax(moe.gate(flat), dim=-1)
    expected = torch.stack([
        sum(probs[n, e] / probs[n, moe.last_topk_idx[n]].sum() * moe.experts[e](flat[n]) for e in moe.last_topk_idx[n])
        + moe.shared_experts[0](flat[n])
        for n in range(flat.shape[0])
    ])
    torch.testing.assert_close(out.reshape(-1, 64), expected, atol=1e-5, rtol=1e-5)


def test_aux_loss_is_one_when_uniform_and_grows_when_collapsed():
    x = torch.rand(4, 8, 64) + 0.1  # all positive, so a positive gate row wins for every token
    for top_k in (1, 2):
        moe = MoEFeedForward(moe_config(experts_per_token=top_k))
        with torch.no_grad():
            moe.gate.weight.zero_()  # uniform router probabilities
        moe(x)
        assert moe.aux_loss.item() == pytest.approx(1.0, abs=1e-6)
        with torch.no_grad():
            moe.gate.weight[0] = 10.0  # every token prefers expert 0 with probability ~1
        moe(x)
        assert (moe.last_topk_idx[:, 0] == 0).all()
        # collapse: aux -> num_experts / experts_per_token
        assert moe.aux_loss.item() == pytest.approx(4 / top_k, abs=1e-3)


def test_model_adds_aux_loss_to_the_training_loss_only():
    torch.manual_seed(0)
    model = randomize(MiniMind(moe_config(aux_loss_coef=0.5)))
    ids = torch.randint(0, 6400, (2, 9))
    out = model(ids, targets=ids)
    ce = F.cross_entropy(out.logits.flatten(0, 1), ids.flatten())
    assert out.aux_loss.item() == pytest.approx(sum(l.mlp.aux_loss.item() for l in model.layers))
    torch.testing.assert_close(out.loss, ce)  # eval mode: the plain language-model loss
    model.train()
    out = model(ids, targets=ids)
    torch.testing.assert_close(out.loss, ce + 0.5 * out.aux_loss)


# --- loss, gradients ----------------------------------------------------------------------------------------


def test_loss_ignores_padding_targets():
    torch.manual_seed(0)
    model = randomize(MiniMind(tiny()))
    ids = torch.randint(0, 6400, (2, 8))
    targets = torch.randint(0, 6400, (2, 8))
    targets[0, 5:] = IGNORE_INDEX
    targets[1, :2] = IGNORE_INDEX
    out = model(ids, targets=targets)
    keep = targets != IGNORE_INDEX
    log_probs = F.log_softmax(out.logits, dim=-1)
    manual = -log_probs[keep].gather(-1, targets[keep][:, None]).mean()
    torch.testing.assert_close(out.loss, manual)
    # the same positions with real targets instead of IGNORE_INDEX give a different loss
    full = model(ids, targets=torch.where(keep, targets, 7)).loss
    assert not math.isclose(full.item(), out.loss.item(), rel_tol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = randomize(MiniMind(tiny())).train()
    ids = torch.randint(0, 6400, (2, 12))

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(ids, targets=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.gradient_checkpointing = True
    checkpointed = grads()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


# --- sampling filters ---------------------------------------------------------------------------------------


def test_filter_logits_worked_examples():
    # probabilities 0.1, 0.5, 0.15, 0.25 (deliberately not sorted)
    logits = torch.tensor([[0.1, 0.5, 0.15, 0.25]]).log()
    kept = lambda out: (out[0] > float("-inf")).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits)) == [0, 1, 2, 3]
    assert kept(filter_logits(logits, top_k=2)) == [1, 3]
    assert kept(filter_logits(logits, top_k=1)) == [1]
    assert kept(filter_logits(logits, top_k=10)) == [0, 1, 2, 3]  # k above the vocabulary keeps all
    # top_p keeps the most likely tokens until their total reaches p: 0.5 -> {1}; 0.7 -> 0.5 + 0.25; 0.8 -> + 0.15
    assert kept(filter_logits(logits, top_p=0.5)) == [1]
    assert kept(filter_logits(logits, top_p=0.7)) == [1, 3]
    assert kept(filter_logits(logits, top_p=0.8)) == [1, 2, 3]
    assert kept(filter_logits(logits, top_p=0.01)) == [1]  # the best token always stays
    assert kept(filter_logits(logits, top_k=3, top_p=0.7)) == [1, 3]
    # kept logits are unchanged, and each row of a batch is filtered on its own
    out = filter_logits(logits, top_k=2)
    assert out[0, 1] == logits[0, 1] and out[0, 3] == logits[0, 3]
    batch = filter_logits(torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]), top_k=1)
    assert torch.isfinite(batch).tolist() == [[True, False, False], [False, False, True]]


# --- the presets command ------------------------------------------------------------------------------------


def test_presets_command_table_and_json(capsys):
    assert cli.main(["presets"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["preset", "total", "embedding", "per"]
    by_name = {line.split()[0]: line.split() for line in table[1:]}
    assert set(by_name) == set(PRESETS)
    assert by_name["minimind2-small"][1:4] == ["25,829,888", "3,276,800", "2,819,072"]
    assert by_name["minimind2-moe"][1] == "145,029,760"

    assert cli.main(["presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["preset"] for r in rows] == list(PRESETS)
    for row in rows:
        cfg = get_preset(row["preset"])
        counts = count_parameters(cfg)
        assert row["total"] == EXPECTED_PARAMETERS[row["preset"]]
        assert (row["embedding"], row["per_block"]) == (counts["embedding"], counts["per_block"])
        assert (row["hidden_size"], row["num_layers"], row["num_heads"], row["num_kv_heads"]) == (
            cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads)
    moe = next(r for r in rows if r["preset"] == "minimind2-moe")
    assert (moe["num_experts"], moe["experts_per_token"], moe["shared_experts"]) == (4, 2, 1)


# --- Hugging Face equivalence -------------------------------------------------------------------------------

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
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(ours, theirs), name


def test_hf_folder_with_tokenizer_loads_with_auto_classes(tmp_path):
    from minimind_edu.tokenizer import default_tokenizer_dir, get_default_tokenizer

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
    assert isinstance(hf_tok.decode(hf_new), str)


def test_hf_export_refuses_moe_and_load_refuses_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="mixture-of-experts.*cannot be exported"):
        export_hf(MiniMind(moe_config()), tmp_path / "moe")
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
