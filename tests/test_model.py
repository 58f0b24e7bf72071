"""The model: exact sizes, presets and configs, clear errors, attention paths that agree, the KV cache,
MoE routing, the loss, gradient checkpointing."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from minimind_edu.data import IGNORE_INDEX
from minimind_edu.model import (
    PRESETS,
    MiniMind,
    ModelConfig,
    MoEFeedForward,
    count_parameters,
    get_preset,
)

from weights import randomize


class Sizes(NamedTuple):
    embedding: int
    attention_per_block: int
    mlp_per_block: int
    per_block: int
    blocks: int
    total: int


# Parameter counts worked out by hand from each preset's shape. Every preset has a 6400-token vocabulary, a tied
# embedding / LM head (counted once), no biases, and two RMSNorm gains (2 x hidden) per block plus a final one.
# Attention: q and o are hidden x hidden; k and v are hidden x (kv heads x head_dim).
PRESET_SIZES = {
    # hidden 512, 8 layers, 8 heads of 64, 2 KV heads (k, v: 512 x 128), SwiGLU 1408.
    # attention 2 x 512 x 512 + 2 x 512 x 128 = 655,360; mlp 3 x 512 x 1408 = 2,162,688; block + 1,024 norms.
    # total 6400 x 512 = 3,276,800 + 8 x 2,819,072 + 512 = 25,829,888 (MiniMind's "26M")
    "minimind2-small": Sizes(3_276_800, 655_360, 2_162_688, 2_819_072, 22_552_576, 25_829_888),
    # hidden 768, 16 layers, 8 heads of 96, 2 KV heads (768 x 192), SwiGLU 2048.
    # attention 2 x 768 x 768 + 2 x 768 x 192 = 1,179,648 + 294,912 = 1,474,560; mlp 3 x 768 x 2048 = 4,718,592;
    # block + 1,536 norms = 6,194,688. total 6400 x 768 = 4,915,200 + 16 x 6,194,688 + 768 = 104,030,976 ("104M")
    "minimind2": Sizes(4_915_200, 1_474_560, 4_718_592, 6_194_688, 99_115_008, 104_030_976),
    # hidden 640, 8 layers, 8 heads of 80, 2 KV heads (640 x 160), SwiGLU 1728, 4 routed experts + 1 shared.
    # attention 2 x 640 x 640 + 2 x 640 x 160 = 819,200 + 204,800 = 1,024,000;
    # mlp 5 experts x 3 x 640 x 1728 = 16,588,800 + the 640 x 4 router = 16,591,360; block + 1,280 norms.
    # total 6400 x 640 = 4,096,000 + 8 x 17,616,640 + 640 = 145,029,760 ("145M")
    "minimind2-moe": Sizes(4_096_000, 1_024_000, 16_591_360, 17_616_640, 140_933_120, 145_029_760),
    # hidden 768, 8 layers, 8 heads of 96, 4 KV heads (768 x 384), QK-norm, SwiGLU 2432.
    # attention 1,179,648 + 2 x 768 x 384 = 589,824, + 2 x 96 QK-norm gains = 1,769,664;
    # mlp 3 x 768 x 2432 = 5,603,328; block + 1,536 norms = 7,374,528. total 4,915,200 + 8 x 7,374,528 + 768
    "minimind3": Sizes(4_915_200, 1_769_664, 5_603_328, 7_374_528, 58_996_224, 63_912_192),
    # minimind3 with 4 routed experts (top-1, no shared one) of SwiGLU 2432: mlp 4 x 3 x 768 x 2432 = 22,413,312
    # + the 768 x 4 router = 22,416,384; block 1,769,664 + 22,416,384 + 1,536 = 24,187,584.
    # total 4,915,200 + 8 x 24,187,584 + 768 = 198,416,640 ("198M"; one expert active: "A64M")
    "minimind3-moe": Sizes(4_915_200, 1_769_664, 22_416_384, 24_187_584, 193_500_672, 198_416_640),
    # hidden 256, 4 layers, 8 heads of 32, 2 KV heads (256 x 64), SwiGLU 704.
    # attention 2 x 256 x 256 + 2 x 256 x 64 = 131,072 + 32,768 = 163,840; mlp 3 x 256 x 704 = 540,672;
    # block + 512 norms = 705,024. total 6400 x 256 = 1,638,400 + 4 x 705,024 + 256 = 4,458,752
    "course-cpu": Sizes(1_638_400, 163_840, 540_672, 705_024, 2_820_096, 4_458_752),
    # hidden 64, 2 layers, 4 heads of 16, 2 KV heads (64 x 32), SwiGLU 192.
    # attention 2 x 64 x 64 + 2 x 64 x 32 = 8,192 + 4,096 = 12,288; mlp 3 x 64 x 192 = 36,864;
    # block + 128 norms = 49,280. total 6400 x 64 = 409,600 + 2 x 49,280 + 64 = 508,224
    "tiny": Sizes(409_600, 12_288, 36_864, 49_280, 98_560, 508_224),
}


def tiny(**overrides) -> ModelConfig:
    return replace(get_preset("tiny"), **overrides)


# --- sizes ------------------------------------------------------------------------------------------------


def test_every_preset_has_pinned_sizes():
    assert list(PRESET_SIZES) == list(PRESETS)


@pytest.mark.parametrize("name", list(PRESET_SIZES))
def test_preset_parameter_counts(name):
    expected = PRESET_SIZES[name]
    counts = count_parameters(get_preset(name))
    assert Sizes(*(counts[field] for field in Sizes._fields)) == expected
    # The real modules have exactly these sizes, part by part.
    with torch.device("meta"):  # shapes only: the 145M MoE costs no memory or init time
        model = MiniMind(get_preset(name))
    block = model.layers[0]
    assert model.num_parameters() == expected.total
    assert model.embed_tokens.weight.numel() == expected.embedding
    assert sum(p.numel() for p in block.parameters()) == expected.per_block
    assert sum(p.numel() for p in block.self_attn.parameters()) == expected.attention_per_block
    assert sum(p.numel() for p in block.mlp.parameters()) == expected.mlp_per_block


def test_count_parameters_breakdown_of_minimind2_small():
    assert count_parameters(get_preset("minimind2-small")) == {
        "embedding": 3_276_800,  # 6400 x 512
        "attention_per_block": 655_360,  # q, o: 512 x 512 each; k, v: 512 x 128 each
        "mlp_per_block": 2_162_688,  # gate, up, down: 512 x 1408 each
        "norms_per_block": 1_024,  # two RMSNorm gains of 512
        "per_block": 2_819_072,
        "blocks": 22_552_576,  # 8 x 2,819,072
        "final_norm": 512,
        "lm_head": 0,  # tied: the embedding matrix, already counted
        "total": 25_829_888,
    }


def test_swiglu_sizes_follow_minimind_rules():
    # MiniMind2: 8/3 x hidden, rounded up to a multiple of 64.
    assert get_preset("minimind2-small").intermediate_size == 1408  # 8/3 x 512 = 1365.3 -> 22 x 64
    assert get_preset("minimind2").intermediate_size == 2048  # 8/3 x 768 = 2048 exactly
    assert get_preset("minimind2-moe").intermediate_size == 1728  # 8/3 x 640 = 1706.7 -> 27 x 64
    assert get_preset("course-cpu").intermediate_size == 704  # 8/3 x 256 = 682.7 -> 11 x 64
    assert get_preset("tiny").intermediate_size == 192  # 8/3 x 64 = 170.7 -> 3 x 64
    # MiniMind3: pi x hidden, rounded up to a multiple of 64.
    assert get_preset("minimind3").intermediate_size == 2432  # pi x 768 = 2412.7 -> 38 x 64
    assert get_preset("minimind3").head_dim == 96  # 768 / 8 heads


def test_tied_embedding_is_one_matrix_and_counted_once():
    model = MiniMind(tiny())
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.num_parameters() == 508_224
    untied = MiniMind(tiny(tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.embed_tokens.weight
    assert untied.num_parameters() == 917_824  # 508,224 + a separate 6400 x 64 head of 409,600
    assert count_parameters(untied.config)["lm_head"] == 409_600
    assert count_parameters(untied.config)["total"] == 917_824


# --- presets and configs ------------------------------------------------------------------------------------


def test_get_preset_returns_an_independent_copy():
    first = get_preset("tiny")
    first.num_layers = 99
    assert get_preset("tiny").num_layers == 2
    assert PRESETS["tiny"].num_layers == 2
    assert get_preset("tiny") is not get_preset("tiny")


def test_replace_recomputes_the_swiglu_width_only_when_asked():
    small = get_preset("minimind2-small")
    assert replace(small, hidden_size=768, intermediate_size=None).intermediate_size == 2048  # 8/3 x 768
    assert replace(small, hidden_size=640, intermediate_size=None).intermediate_size == 1728  # 1706.7 -> 27 x 64
    assert replace(small, hidden_size=768).intermediate_size == 1408  # a width that is set stays as it is


def test_invalid_replace_raises_naming_the_fields():
    with pytest.raises(ValueError, match="hidden_size=512 is not divisible by num_heads=7"):
        replace(get_preset("minimind2-small"), num_heads=7)


def test_from_dict_round_trips_and_refuses_unknown_keys():
    cfg = get_preset("minimind3")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\): \['num_layer'\]"):
        ModelConfig.from_dict({**get_preset("tiny").to_dict(), "num_layer": 3})


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'gpt5'.*minimind2-small"):
        get_preset("gpt5")


# --- clear errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(hidden_size=100, num_heads=8), "hidden_size=100 is not divisible by num_heads=8"),
        (dict(num_heads=8, num_kv_heads=3), "num_heads=8 is not divisible by num_kv_heads=3"),
        (dict(hidden_size=24, num_heads=8, num_kv_heads=8), "head_dim = hidden_size / num_heads = 3 is odd"),
        (dict(num_experts=2, experts_per_token=3), "experts_per_token=3 must be between 1 and num_experts=2"),
        (dict(num_experts=-1), "num_experts must be >= 0, got -1"),
        (dict(attention="flash"), """attention must be "sdpa" or "naive", got 'flash'"""),
        (dict(num_layers=0), "num_layers must be at least 1, got 0"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_impossible_configs_raise(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def test_sequence_longer_than_max_positions_raises():
    model = MiniMind(tiny(max_position_embeddings=16)).eval()
    assert model(torch.zeros(1, 16, dtype=torch.long)).logits.shape == (1, 16, 6400)  # exactly the limit is fine
    with pytest.raises(ValueError, match="17 tokens is longer than max_position_embeddings=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    past = model(torch.zeros(1, 10, dtype=torch.long), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="17 tokens"):  # the cached tokens count too
        model(torch.zeros(1, 7, dtype=torch.long), past_key_values=past)


# --- attention paths and the KV cache ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, kv_heads", [({}, 2), ({"qk_norm": True, "num_kv_heads": 1}, 1)], ids=["gqa", "qk_norm-one_kv_head"]
)
def test_sdpa_equals_naive_with_and_without_cache(extra, kv_heads):
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
            # keys cached per KV head, not per query head: (batch 2, KV heads, 24 tokens, head_dim 16)
            assert past[0][0].shape == (2, kv_heads, 24, 16)


# --- mixture of experts ---------------------------------------------------------------------------------------


def moe_config(**overrides) -> ModelConfig:
    return tiny(**{"num_experts": 4, "experts_per_token": 2, "shared_experts": 1, **overrides})


class Scale(torch.nn.Module):
    """A stand-in expert that multiplies its input by a constant, so a mixture can be worked out by hand."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x


def test_each_token_goes_to_exactly_top_k_experts():
    torch.manual_seed(0)
    model = randomize(MiniMind(moe_config()))
    seen = {}
    for layer_i, layer in enumerate(model.layers):
        for e, expert in enumerate(layer.mlp.experts):
            expert.register_forward_hook(lambda m, inp, out, key=(layer_i, e): seen.__setitem__(key, inp[0].shape[0]))
    ids = torch.randint(0, 6400, (3, 11))
    model(ids)
    for layer_i, layer in enumerate(model.layers):
        idx = layer.mlp.last_topk_idx
        assert idx.shape == (33, 2)  # 3 x 11 tokens, 2 experts each
        assert (idx[:, 0] != idx[:, 1]).all() and idx.min() >= 0 and idx.max() < 4
        # the experts really ran on 33 x 2 = 66 rows in total, each on the tokens routed to it
        rows = [seen.get((layer_i, e), 0) for e in range(4)]
        assert sum(rows) == 66
        assert rows == [int((idx == e).sum()) for e in range(4)]


def test_moe_output_worked_example():
    moe = MoEFeedForward(moe_config())  # 4 routed experts, top-2, 1 shared expert, hidden 64
    moe.experts = torch.nn.ModuleList(Scale(k) for k in (1.0, 2.0, 3.0, 4.0))
    moe.shared_experts = torch.nn.ModuleList([Scale(10.0)])
    with torch.no_grad():
        # The router's logits are log-probabilities: input dimension 0 votes 0.4, 0.3, 0.2, 0.1 and
        # dimension 1 the reverse, so a one-hot token gets exactly those probabilities.
        moe.gate.weight.zero_()
        moe.gate.weight[:, 0] = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
        moe.gate.weight[:, 1] = torch.tensor([0.1, 0.2, 0.3, 0.4]).log()
    x = torch.zeros(1, 3, 64)
    x[0, 0, 0] = 1.0  # probabilities 0.4, 0.3, 0.2, 0.1
    x[0, 1, 1] = 1.0  # probabilities 0.1, 0.2, 0.3, 0.4
    x[0, 2, 0] = 2.0  # logits doubled: probabilities in the ratio 0.16 : 0.09 : 0.04 : 0.01
    out = moe(x)
    assert moe.last_topk_idx.tolist() == [[0, 1], [3, 2], [0, 1]]
    expected = torch.zeros(1, 3, 64)
    # token 0: experts 0 and 1, renormalised to 0.4/0.7 and 0.3/0.7: 4/7 x 1 + 3/7 x 2 + shared 10 = 80/7
    expected[0, 0, 0] = 80 / 7
    # token 1: experts 3 and 2, weighted 4/7 and 3/7: 4/7 x 4 + 3/7 x 3 + 10 = 95/7
    expected[0, 1, 1] = 95 / 7
    # token 2: experts 0 and 1, weighted 0.16/0.25 = 0.64 and 0.36: (0.64 x 1 + 0.36 x 2 + 10) x its input 2 = 22.72
    expected[0, 2, 0] = 22.72
    torch.testing.assert_close(out, expected)


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
        # collapse: aux -> num_experts / experts_per_token = 4 / top_k
        assert moe.aux_loss.item() == pytest.approx(4 / top_k, abs=1e-3)


def test_moe_presets_carry_upstream_minimind_defaults():
    # jingyaogong/minimind: MiniMind2's MoEGate (2025-12 onwards) aux_loss_alpha=0.01 with seq_aux=True, top-2 of
    # 4 routed experts plus 1 shared, norm_topk_prob=True; MiniMind3's MiniMindConfig router_aux_loss_coef=5e-4
    # over the batch, num_experts_per_tok=1 of 4 routed experts, no shared expert, norm_topk_prob=True.
    m2, m3 = get_preset("minimind2-moe"), get_preset("minimind3-moe")
    assert (m2.aux_loss_coef, m2.aux_loss_per_sequence, m2.experts_per_token, m2.shared_experts) == (0.01, True, 2, 1)
    assert (m3.aux_loss_coef, m3.aux_loss_per_sequence, m3.experts_per_token, m3.shared_experts) == (5e-4, False, 1, 0)
    assert m2.norm_topk_prob and m3.norm_topk_prob and m3.qk_norm and m3.intermediate_size == 2432
    course = ModelConfig(num_experts=4)  # a course-made MoE: 0.1 over the whole batch
    assert (course.aux_loss_coef, course.aux_loss_per_sequence) == (0.1, False)


def test_norm_topk_prob_off_weights_experts_by_their_raw_probability():
    # The worked example above, without renormalising: token 0 picks experts 0 and 1 with probabilities 0.4 and
    # 0.3: 0.4 x 1 + 0.3 x 2 + shared 10 = 11.0 (renormalised it was 80/7 = 11.43).
    moe = MoEFeedForward(moe_config(norm_topk_prob=False))
    moe.experts = torch.nn.ModuleList(Scale(k) for k in (1.0, 2.0, 3.0, 4.0))
    moe.shared_experts = torch.nn.ModuleList([Scale(10.0)])
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[:, 0] = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    x = torch.zeros(1, 1, 64)
    x[0, 0, 0] = 1.0
    assert moe(x)[0, 0, 0].item() == pytest.approx(11.0)
    # top-1 with renormalisation (MiniMind3-MoE): the chosen expert (0, probability 0.4) gets weight 0.4/0.4 = 1
    top1 = MoEFeedForward(moe_config(experts_per_token=1, shared_experts=0))
    top1.experts = torch.nn.ModuleList(Scale(k) for k in (1.0, 2.0, 3.0, 4.0))
    top1.gate.load_state_dict(moe.gate.state_dict())
    assert top1(x)[0, 0, 0].item() == pytest.approx(1.0)


def test_aux_loss_per_sequence_worked_example():
    # Two sequences of 2 tokens, top-1 of 2 experts (no shared). Sequence 0 sends both tokens to expert 0 with
    # probabilities (0.8, 0.2); sequence 1 one token each way, probabilities (0.8, 0.2) and (0.2, 0.8).
    # Per sequence (MiniMind2): seq 0: f = (1, 0), P = (0.8, 0.2): 2 x 0.8 = 1.6; seq 1: f = (0.5, 0.5),
    # P = (0.5, 0.5): 2 x 0.5 = 1.0; mean 1.3. Over the batch: f = (0.75, 0.25), P = (0.65, 0.35):
    # 2 x (0.4875 + 0.0875) = 1.15.
    cfg = tiny(num_experts=2, experts_per_token=1, shared_experts=0)
    x = torch.zeros(2, 2, 64)
    x[0, :, 0] = 1.0
    x[1, 0, 0], x[1, 1, 1] = 1.0, 1.0
    losses = {}
    for per_sequence in (True, False):
        moe = MoEFeedForward(replace(cfg, aux_loss_per_sequence=per_sequence))
        with torch.no_grad():
            moe.gate.weight.zero_()
            moe.gate.weight[:, 0] = torch.tensor([0.8, 0.2]).log()
            moe.gate.weight[:, 1] = torch.tensor([0.2, 0.8]).log()
        moe(x)
        losses[per_sequence] = moe.aux_loss.item()
    assert losses == {True: pytest.approx(1.3), False: pytest.approx(1.15)}


def test_model_adds_aux_loss_to_the_training_loss_only():
    torch.manual_seed(0)
    model = randomize(MiniMind(moe_config(aux_loss_coef=0.5)))
    with torch.no_grad():
        for layer in model.layers:
            layer.mlp.gate.weight.zero_()  # uniform routing: each layer's aux loss is exactly 1.0
    ids = torch.randint(0, 6400, (2, 9))
    evaluated = model(ids, targets=ids)
    assert evaluated.aux_loss.item() == pytest.approx(2.0)  # summed over the 2 layers
    # eval mode: the plain language-model loss
    torch.testing.assert_close(evaluated.loss, F.cross_entropy(evaluated.logits.flatten(0, 1), ids.flatten()))
    model.train()
    trained = model(ids, targets=ids)
    assert trained.loss.item() == pytest.approx(evaluated.loss.item() + 1.0, abs=1e-5)  # + 0.5 x 2.0


# --- loss, gradients ----------------------------------------------------------------------------------------


def copying_model() -> MiniMind:
    """A tiny model whose prediction for input token i (i < 4) is i with probability exactly 1/2.

    All matrices are zero except four embedding rows, s x e_i with s = ln(6399) / 8: attention and SwiGLU add
    nothing, the final RMSNorm turns s x e_i into sqrt(64) x e_i = 8 e_i, and the tied head scores token j with
    8 x (row j . e_i) = ln(6399) for j = i and 0 for the other 6399 tokens. So p(i) = 6399 / (6399 + 6399) = 1/2,
    and every other token has p = 1 / 12,798.
    """
    model = MiniMind(tiny(rms_norm_eps=1e-12)).eval()  # eps negligible next to mean(x^2) = s^2 / 64
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.zero_()
        for i in range(4):
            model.embed_tokens.weight[i, i] = math.log(6399) / 8
    return model


def test_loss_worked_example_ignores_padding_targets():
    model = copying_model()
    ids = torch.tensor([[0, 1, 2, 3]])
    # Targets: 0 (the copy: loss ln 2 = 0.6931) and 5 (not the copy: loss ln 12,798 = 9.4570); two are padding.
    targets = torch.tensor([[0, IGNORE_INDEX, 5, IGNORE_INDEX]])
    assert model(ids, targets=targets).loss.item() == pytest.approx(5.0751, abs=1e-4)  # (0.6931 + 9.4570) / 2
    # The padded positions with real targets (the copies 1 and 3) count: (3 x 0.6931 + 9.4570) / 4 = 2.8841.
    assert model(ids, targets=torch.tensor([[0, 1, 5, 3]])).loss.item() == pytest.approx(2.8841, abs=1e-4)


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
    assert list(checkpointed) == list(plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)
