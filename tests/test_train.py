"""The training loop: schedule, optimizer groups, accumulation, overfitting, checkpoints, resume, DDP, safety."""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

from minimind_edu.checkpoint import latest_checkpoint, list_checkpoints, load_model, load_trained
from minimind_edu.data import IGNORE_INDEX, TokenData, make_batches
from minimind_edu.errors import RunError
from minimind_edu.model import MiniMind, get_preset
from minimind_edu.tokenizer import default_tokenizer_dir, get_default_tokenizer
from minimind_edu.train import Trainer, accumulation_divisor, counted_targets, train
from minimind_edu.train_config import TrainConfig

from launch import run_torchrun

STORIES = [f"Once upon a time there was a cat number {i}. It liked fish, milk and naps in the sun." for i in range(60)]
VALID = [f"A dog called Rex number {i} ran to the park." for i in range(8)]

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from minimind_edu.train import train
from minimind_edu.train_config import TrainConfig
cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
slow = float(sys.argv[2])
train(cfg, callbacks=[lambda r: time.sleep(slow)], resume="--resume" in sys.argv)
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    get_default_tokenizer()
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text("\n\n".join(STORIES))
    (folder / "valid.txt").write_text("\n\n".join(VALID))
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: one thread avoids oversubscription (and is faster here).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def base_cfg(corpus: Path, out_dir: Path | None, **changes) -> TrainConfig:
    cfg = dict(model="tiny", batch_size=4, seq_len=32, max_steps=12, warmup_steps=3, lr=3e-3, min_lr=3e-4,
               log_every=1, eval_every=4, eval_batches=2, save_every=3, keep_last=2,
               out_dir=str(out_dir) if out_dir else None, train_data=[str(corpus / "train.txt")],
               valid_data=[str(corpus / "valid.txt")], tokenizer_dir=str(default_tokenizer_dir()),
               progress=False, measure_mfu=False, precision="auto", seed=7)
    cfg.update(changes)
    return TrainConfig(**cfg)


def child_env(tmp_path: Path) -> dict:
    env = dict(os.environ, MINIMIND_EDU_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def run_child(tmp_path: Path, cfg: TrainConfig, *extra: str, slow: float = 0.0) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen([sys.executable, str(script), json.dumps(cfg.to_dict()), str(slow), *extra],
                            env=child_env(tmp_path), stderr=subprocess.PIPE, text=True)


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def toy_data(n_tokens: int, seed: int = 0, vocab: int = 6400) -> TokenData:
    tokens = np.random.default_rng(seed).integers(3, vocab, n_tokens).astype(np.uint16)
    return TokenData(tokens, np.array([0, n_tokens], dtype=np.int64))


# --- proofs --------------------------------------------------------------------------------------------------


def step_grads(cfg: TrainConfig, data: TokenData, batches=None) -> tuple[dict[str, torch.Tensor], float]:
    """The gradients the first optimizer step applies, and the step's loss (``batches``: instead of data's)."""
    trainer = Trainer(cfg, train_data=data, valid_data=None)
    if batches is not None:
        trainer.batches = batches
    grads = {}
    step = trainer.optimizer.step

    def capture(*a, **k):
        grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
        return step(*a, **k)

    trainer.optimizer.step = capture
    loss, _ = trainer.train_step()
    return grads, loss


def test_grad_accumulation_equals_one_big_batch():
    data = toy_data(2000)
    common = dict(model="tiny", seq_len=16, out_dir=None, progress=False, precision="fp32", grad_clip=0.0)
    big = step_grads(TrainConfig(batch_size=8, grad_accum_steps=1, **common), data)[0]
    small = step_grads(TrainConfig(batch_size=2, grad_accum_steps=4, **common), data)[0]
    assert big.keys() == small.keys()
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-6, msg=name)
    # And the test can fail: one micro-batch alone is a different gradient.
    alone = step_grads(TrainConfig(batch_size=2, grad_accum_steps=1, **common), data)[0]
    assert not torch.allclose(alone["embed_tokens.weight"], big["embed_tokens.weight"], atol=1e-6)


def padded_toy_data(n_docs: int = 64, seed: int = 0) -> TokenData:
    """Documents of 2 to 33 tokens: at seq_len 32 their rows hold very different numbers of counted targets."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 34, n_docs)
    tokens = rng.integers(3, 6400, int(lengths.sum())).astype(np.uint16)
    return TokenData(tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def worst_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max |a - b| over a tensor's entries, relative to b's largest entry, worst over all tensors."""
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max()).item() for n in b)


def test_padded_accumulation_equals_one_big_batch_and_the_mean_of_means_does_not():
    # Padded rows of unequal length: the two micro-batches of this seed hold 37 and 82 counted targets.
    data, seed = padded_toy_data(), 4
    common = dict(model="tiny", seq_len=32, out_dir=None, progress=False, precision="fp32", grad_clip=0.0,
                  batch_kind="padded", seed=seed, measure_mfu=False)
    micro = make_batches(data, "padded", 4, 32, seed)
    counts = [counted_targets(micro.next()[1]) for _ in range(2)]
    assert counts == [37, 82]
    big, big_loss = step_grads(TrainConfig(batch_size=8, grad_accum_steps=1, **common), data)
    small, small_loss = step_grads(TrainConfig(batch_size=4, grad_accum_steps=2, **common), data)
    # fp32 rounding only: the big batch sums all 119 token losses at once, accumulation in two parts, so the
    # sums round differently (measured: loss 1 ulp apart, gradients <= 4e-7 of each tensor's largest entry;
    # fp32's epsilon is 1.2e-7). 1e-5 leaves a margin of 20 and is still 70,000 times below the old error.
    assert abs(small_loss - big_loss) <= 1e-6 * big_loss
    assert worst_relative_difference(small, big) < 1e-5
    # The old rule, mean loss / grad_accum_steps per micro-batch, weighs each of the 37 targets 82/37 times as
    # much as each of the 82: its gradient is far from the big batch's (measured 0.73 of a tensor's largest entry).
    torch.manual_seed(seed)
    model = MiniMind(get_preset("tiny"))
    old_rule = make_batches(data, "padded", 4, 32, seed)
    for _ in range(2):
        inputs, targets = old_rule.next()
        (model(inputs, targets).loss / 2).backward()
    assert worst_relative_difference({n: p.grad for n, p in model.named_parameters()}, big) > 0.1


def test_a_micro_batch_without_counted_targets_adds_nothing():
    data = padded_toy_data()
    cfg = dict(model="tiny", seq_len=32, out_dir=None, progress=False, precision="fp32", grad_clip=0.0,
               batch_kind="padded", measure_mfu=False)
    inputs, targets = make_batches(data, "padded", 4, 32, 0).next()
    empty = (inputs, torch.full_like(targets, IGNORE_INDEX))  # all padding: its mean loss would be 0/0 = NaN

    class Fixed:  # hands out the given micro-batches, in order
        def __init__(self, *batches):
            self.batches = list(batches)

        def next(self):
            return self.batches.pop(0)

    with_empty, loss = step_grads(TrainConfig(batch_size=4, grad_accum_steps=2, **cfg), data,
                                  Fixed(empty, (inputs, targets)))
    alone, loss_alone = step_grads(TrainConfig(batch_size=4, grad_accum_steps=1, **cfg), data,
                                   Fixed((inputs, targets)))
    assert loss == loss_alone and math.isfinite(loss)
    assert all(torch.equal(with_empty[n], alone[n]) for n in alone)


def test_accumulation_divisor():
    # The notebook's worked example: micro-batches of 3 and 1 counted targets, 4 in the step.
    assert accumulation_divisor(4, 3) == 4 / 3 and accumulation_divisor(4, 1) == 4
    assert accumulation_divisor(4 * 256, 256) == 4  # packed: every micro-batch counts the same, a plain average
    assert accumulation_divisor(2 * 4 * 256, 256, world_size=2) == 4  # ranks: DDP's average over 2 undone
    with pytest.raises(ValueError):
        accumulation_divisor(4, 0)
    with pytest.raises(ValueError):
        accumulation_divisor(3, 4)


def test_overfits_one_small_batch():
    data = toy_data(4 * 16 + 1, seed=1)  # exactly 4 windows of 16: every step sees the same batch
    cfg = TrainConfig(model="tiny", batch_size=4, seq_len=16, max_steps=120, warmup_steps=5, lr=1e-2, min_lr=1e-3,
                      weight_decay=0.0, out_dir=None, progress=False, log_every=1, measure_mfu=False)
    result = train(cfg, train_data=data)
    assert result.losses[0] > 7.0  # about ln(6400) = 8.76 at the start
    assert result.losses[-1] < 0.1 and max(result.losses[-10:]) < 0.2


def test_compile_falls_back_to_eager_and_trains_the_same(monkeypatch, capsys):
    data = toy_data(8 * 16 + 1, seed=2)
    cfg = TrainConfig(model="tiny", batch_size=4, seq_len=16, max_steps=3, warmup_steps=1, out_dir=None,
                      progress=False, log_every=1, measure_mfu=False)
    eager = train(cfg, train_data=data)

    def compile_without_compiler(model):
        def compiled(*args, **kwargs):
            raise RuntimeError("InductorError: CalledProcessError: Command '['g++', ...]' returned non-zero status")
        return compiled

    monkeypatch.setattr(torch, "compile", compile_without_compiler)
    trainer = Trainer(replace(cfg, compile=True), train_data=data)
    fell_back = trainer.run()
    assert trainer.compile_status.startswith("off (RuntimeError: InductorError")
    assert "training continues without it" in capsys.readouterr().err
    assert fell_back.losses == eager.losses  # the failed first step was run again eagerly, nothing lost

    monkeypatch.setattr("shutil.which", lambda name: None)  # no C++ compiler: compile is not even tried
    monkeypatch.delenv("CXX", raising=False)
    trainer = Trainer(replace(cfg, compile=True), train_data=data)
    assert trainer.compile_status.startswith("off (no C++ compiler found")
    assert trainer.run().losses == eager.losses


def test_kill_and_resume_is_bit_identical(tmp_path, corpus):
    whole = tmp_path / "whole"
    proc = run_child(tmp_path, base_cfg(corpus, whole))
    assert proc.wait(timeout=120) == 0, proc.stderr.read()

    killed = tmp_path / "killed"
    cfg = base_cfg(corpus, killed)
    proc = run_child(tmp_path, cfg, slow=0.3)
    deadline = time.time() + 120
    while time.time() < deadline:  # SIGKILL, from outside, once step 7 is logged (checkpoint 6 exists)
        if (killed / "metrics.jsonl").exists() and any(r["step"] >= 7 for r in read_metrics(killed)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    at = int(latest_checkpoint(killed).name.split("_")[1])
    assert 6 <= at < 12

    proc = run_child(tmp_path, cfg, "--resume")
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    a, b = read_metrics(whole), read_metrics(killed)
    assert [r["step"] for r in b] == list(range(1, 13))
    for key in ("loss", "grad_norm", "lr"):
        assert [r[key] for r in b] == [r[key] for r in a], key  # exact equality: bitwise
    assert [r.get("val_loss") for r in b] == [r.get("val_loss") for r in a]
    wa, wb = load_model(whole).state_dict(), load_model(killed).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


KILL_IN_WRITE = r"""
import os, signal, sys, json, torch
import minimind_edu.checkpoint as C
import minimind_edu.train as T
calls = []
def dying_write(state, path):
    calls.append(path)
    if len(calls) == 2:  # the second checkpoint: write half a file, then die
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04half")
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save(state, path)
C._write_state = dying_write
import minimind_edu.train_config as TC
T.train(TC.TrainConfig.from_dict(json.loads(sys.argv[1])))
"""


def test_kill_during_checkpoint_write_keeps_previous(tmp_path, corpus):
    out = tmp_path / "run"
    cfg = base_cfg(corpus, out, max_steps=6, eval_every=0)
    script = tmp_path / "die.py"
    script.write_text(KILL_IN_WRITE)
    proc = subprocess.run([sys.executable, str(script), json.dumps(cfg.to_dict())], env=child_env(tmp_path),
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert list((out / "checkpoints").glob(".tmp-step_00000006-*"))  # it really died mid-write
    assert [p.name for p in list_checkpoints(out)] == ["step_00000003"]
    state = torch.load(out / "checkpoints" / "step_00000003" / "state.pt", weights_only=True)
    assert state["step"] == 3
    load_model(out)
    result = train(cfg, resume=True)  # continues from step 3 and cleans the half-written folder
    assert result.step == 6 and [r["step"] for r in result.history] == list(range(1, 7))
    assert not list((out / "checkpoints").glob(".tmp-*"))


DDP_CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
from minimind_edu.train import train
from minimind_edu.train_config import TrainConfig
train(TrainConfig.from_dict(json.loads(sys.argv[1])))
"""


# Padded rows hold unequal numbers of counted targets on the two ranks: the step's loss is still the mean over all
# of them (each rank's share is scaled by the ranks' count before DDP or FSDP averages the gradients).
@pytest.mark.parametrize("strategy,batch_kind", [("ddp", "packed"), ("zero1", "packed"), ("fsdp", "packed"),
                                                 ("ddp", "padded")])
def test_two_processes_equal_one_under_every_strategy(strategy, batch_kind, tmp_path, corpus):
    # fp32: the two ranks' gradients are averaged in another order than one process sums them, so losses agree
    # to float rounding (measured ~1e-7), not bit for bit; ZeRO-1 and FSDP change where AdamW's state lives and
    # how gradients travel, not the arithmetic of the update.
    single = tmp_path / "single"
    common = dict(max_steps=5, grad_accum_steps=2, precision="fp32", eval_every=5, save_every=3,
                  batch_kind=batch_kind)
    # The same validation sequences in both: one batch of 4 here, two batches of 2 on each rank.
    proc = run_child(tmp_path, base_cfg(corpus, single, batch_size=4, eval_batches=1, **common))
    ranks = tmp_path / strategy
    script = tmp_path / "ddp_child.py"
    script.write_text(DDP_CHILD)
    cfg = base_cfg(corpus, ranks, batch_size=2, eval_batches=2, strategy=strategy, **common)
    out = run_torchrun([str(script), json.dumps(cfg.to_dict())], env=child_env(tmp_path), capture_output=True,
                       text=True, timeout=150)
    assert out.returncode == 0, out.stderr[-3000:]
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    a, b = read_metrics(single), read_metrics(ranks)  # rank 0 alone wrote the file
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5]
    assert b[0]["tokens"] == a[0]["tokens"] == 2 * 4 * 32
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-5)
    np.testing.assert_allclose(b[-1]["val_loss"], a[-1]["val_loss"], rtol=1e-5)
    wa, wb = load_model(single).state_dict(), load_model(ranks).state_dict()  # whole tensors, whatever the strategy
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)
    # The 2-rank checkpoint of step 3 continues in one process with the same global batch (4 = 2 x 2).
    resumed = tmp_path / "resumed"
    shutil.copytree(ranks, resumed)
    for ckpt in list_checkpoints(resumed)[1:]:
        shutil.rmtree(ckpt)
    (resumed / ".lock").unlink(missing_ok=True)
    cont = train(base_cfg(corpus, resumed, batch_size=4, eval_batches=1, **common), resume=True)
    np.testing.assert_allclose(cont.losses[3:], [r["loss"] for r in a][3:], rtol=1e-5)


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loading_never_runs_pickled_code(tmp_path, corpus):
    out = tmp_path / "run"
    cfg = base_cfg(corpus, out, max_steps=2, eval_every=0, save_every=1)
    train(cfg)
    ckpt = latest_checkpoint(out)
    marker = tmp_path / "pwned"
    torch.save({"step": Payload(marker)}, ckpt / "state.pt")
    # The manifest notices the swapped file first: resuming skips that checkpoint for the one before it.
    assert Trainer(cfg, resume=True).step == 1
    (ckpt / "manifest.json").unlink()  # an attacker can drop the manifest; the loader itself must still refuse
    with pytest.raises(pickle.UnpicklingError):
        Trainer(cfg, resume=True)
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(SafetensorError, match="deserializing header"):  # not a safetensors file: refused unread
        load_model(ckpt)
    assert not marker.exists()


def test_checkpoint_contents_and_generation_ready(tmp_path, corpus):
    out = tmp_path / "run"
    result = train(base_cfg(corpus, out, max_steps=4, save_every=2, keep_last=1))
    assert [p.name for p in list_checkpoints(out)] == ["step_00000004"]  # keep_last=1 pruned step 2
    files = sorted(p.name for p in result.checkpoint.iterdir())
    assert files == ["config.json", "manifest.json", "model.safetensors", "state.pt", "tokenizer.json",
                     "tokenizer_config.json"]
    model, tok = load_trained(out)
    assert not model.training and tok.get_vocab_size() == 6400
    for k, v in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    records = read_metrics(out)
    assert set(records[-1]) >= {"step", "tokens", "loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "mfu",
                                "peak_mem"}
    assert records[-1]["tokens"] == 4 * 4 * 32


def test_callback_can_stop_and_time_budget_fits_steps(tmp_path, corpus):
    seen, after = [], []
    stop_at_3 = lambda r: r["step"] == 3  # noqa: E731
    result = train(base_cfg(corpus, None, max_steps=50), callbacks=[seen.append, stop_at_3, after.append])
    assert result.stopped_early and result.step == 3 and [r["step"] for r in seen] == [1, 2, 3]
    assert [r["step"] for r in after] == [1, 2, 3]  # a callback after the stopping one still sees the last record
    budget = train(base_cfg(corpus, None, time_budget_min=0.02, max_steps=3, eval_every=0, probe_steps=2))
    assert budget.step > 3 and budget.step == budget.max_steps  # by the clock: cfg.max_steps is not used
    assert budget.history[-1]["lr"] == pytest.approx(3e-4, abs=0.01 * (3e-3 - 3e-4))  # the cosine ended with time


def slowed(trainer: Trainer, after_s: float, extra_s: float) -> list[float]:
    """Make ``trainer``'s steps ``extra_s`` slower once ``after_s`` seconds of run() have passed (a machine
    that gets busy); returns a list that holds the start time once run() begins."""
    step, start = trainer.train_step, []

    def slow_step():
        if not start:
            start.append(time.perf_counter())
        if time.perf_counter() - start[0] > after_s:
            time.sleep(extra_s)
        return step()

    trainer.train_step = slow_step
    return start


def test_time_budget_holds_through_a_slowdown(tmp_path, corpus):
    # 8 s: ±3% is ±0.24 s, some 30 of the fast steps (~5 ms here) and 6 of the slowed ones, while the clock
    # (perf_counter, sub-microsecond) and sleep (~0.1 ms late) are far finer. Evaluation and checkpoints count.
    budget_s = 8.0
    cfg = base_cfg(corpus, tmp_path / "run", time_budget_min=budget_s / 60, max_steps=5, warmup_steps=5,
                   log_every=5, eval_every=40, save_every=100)
    trainer = Trainer(cfg)
    slowed(trainer, 0.4 * budget_s, 0.03)
    t0 = time.perf_counter()
    result = trainer.run()
    wall = time.perf_counter() - t0
    assert abs(wall - budget_s) <= 0.03 * budget_s, wall
    assert result.step == result.max_steps > 5 and not result.stopped_early
    fast = [r for r in result.history if r["elapsed_s"] < 0.35 * budget_s]
    slow = [r for r in result.history if r["elapsed_s"] > 0.5 * budget_s]
    fast_rate = fast[-1]["step"] / fast[-1]["elapsed_s"]
    slow_rate = (slow[-1]["step"] - slow[0]["step"]) / (slow[-1]["elapsed_s"] - slow[0]["elapsed_s"])
    assert slow_rate < 0.7 * fast_rate  # the slowdown was real: a step count fitted early would overrun
    lrs = [r["lr"] for r in result.history]
    assert lrs[-1] == pytest.approx(cfg.min_lr, abs=0.01 * (cfg.lr - cfg.min_lr))  # the cosine's floor
    after_warmup = [r["lr"] for r in result.history if r["step"] > cfg.warmup_steps]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))  # one smooth descent, no restart
    assert "val_loss" in result.history[-1] and latest_checkpoint(tmp_path / "run").name.endswith(f"{result.step:08d}")
    state = torch.load(latest_checkpoint(tmp_path / "run") / "state.pt", weights_only=True)
    assert state["finished"] and state["time_spent_s"] == pytest.approx(budget_s, rel=0.03)
    assert not Trainer(cfg, resume=True).run().history[len(result.history):]  # a finished run stays finished


def test_time_budget_resume_trains_for_what_remains(tmp_path, corpus):
    budget_s, out = 6.0, tmp_path / "run"
    cfg = base_cfg(corpus, out, time_budget_min=budget_s / 60, warmup_steps=5, log_every=5, eval_every=40,
                   save_every=100)
    first = Trainer(cfg)
    t0 = time.perf_counter()
    part = first.run([lambda r: r["elapsed_s"] > 0.4 * budget_s])  # stopped (and saved) at ~40%
    first_s = time.perf_counter() - t0
    state = torch.load(latest_checkpoint(out) / "state.pt", weights_only=True)
    assert part.stopped_early and not state["finished"]
    assert state["time_spent_s"] == pytest.approx(first_s, abs=0.03 * budget_s)
    second = Trainer(cfg, resume=True)
    slowed(second, 0.2 * budget_s, 0.02)
    t0 = time.perf_counter()
    rest = second.run()
    total = first_s + time.perf_counter() - t0
    assert abs(total - budget_s) <= 0.03 * budget_s, (first_s, total)
    assert rest.step > part.step and rest.history[-1]["lr"] == pytest.approx(cfg.min_lr, abs=0.01 * cfg.lr)
    resumed = [r["lr"] for r in rest.history if r["step"] > part.step]
    assert resumed[0] <= part.history[-1]["lr"] and resumed[0] > cfg.min_lr  # the cosine continues from there


DDP_BUDGET_CHILD = r"""
import json, os, sys, time, torch
torch.set_num_threads(1)
from minimind_edu.train import Trainer
from minimind_edu.train_config import TrainConfig
trainer = Trainer(TrainConfig.from_dict(json.loads(sys.argv[1])))
step = trainer.train_step
def uneven():  # rank 1 sees a slower clock's world: only rank 0's plan may decide
    if int(os.environ["RANK"]) == 1:
        time.sleep(0.002)
    return step()
trainer.train_step = uneven
result = trainer.run()
print(json.dumps({"rank": int(os.environ["RANK"]), "step": result.step, "lr": trainer.last_lr}))
"""


def test_time_budget_ranks_agree(tmp_path, corpus):
    script = tmp_path / "ddp_budget.py"
    script.write_text(DDP_BUDGET_CHILD)
    cfg = base_cfg(corpus, tmp_path / "ddp", batch_size=2, time_budget_min=3 / 60, precision="fp32",
                   eval_every=0, save_every=0, log_every=5)
    out = run_torchrun([str(script), json.dumps(cfg.to_dict())], env=child_env(tmp_path), capture_output=True,
                       text=True, timeout=150)
    assert out.returncode == 0, out.stderr[-3000:]
    ends = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(ends) == 2 and ends[0]["step"] == ends[1]["step"] > 3 and ends[0]["lr"] == ends[1]["lr"]


def test_vocab_mismatch_and_resume_mismatch(tmp_path, corpus):
    from minimind_edu.corpus import CorpusError

    with pytest.raises(CorpusError, match="vocab_size=300"):
        Trainer(base_cfg(corpus, None, model=replace(get_preset("tiny"), vocab_size=300)))
    out = tmp_path / "run"
    train(base_cfg(corpus, out, max_steps=1))
    with pytest.raises(RunError, match="1 setting\\(s\\) differ from the checkpoint's: seq_len: 32 -> 16"):
        Trainer(base_cfg(corpus, out, seq_len=16), resume=True)


def test_config_validates_on_construction_and_refuses_unknown_keys():
    with pytest.raises(ValueError, match="TrainConfig.batch_size must be at least 1, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="seq_len=4096 exceeds the model's max_position_embeddings=2048"):
        TrainConfig(model="course-cpu", seq_len=4096)
    with pytest.raises(ValueError, match='batch_kind must be "packed" or "padded"'):
        replace(TrainConfig(), batch_kind="pading")  # a copy is checked like a new config
    with pytest.raises(ValueError, match="unknown TrainConfig field\\(s\\): bacth_size, lr_max"):
        TrainConfig.from_dict({"bacth_size": 4, "lr_max": 1e-3})
    cfg = TrainConfig(model=get_preset("tiny"), batch_size=3, betas=(0.8, 0.9))
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))  # through JSON, as in config.json
    assert back == cfg and back.betas == (0.8, 0.9) and back.model == get_preset("tiny")
