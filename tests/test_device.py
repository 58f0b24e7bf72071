"""Device and precision: the names a learner types, the dtypes they mean, and what "auto" picks."""
from __future__ import annotations

import pytest
import torch

from minimind_edu.device import (
    PRECISIONS,
    CompiledOrEager,
    autocast,
    autocast_dtype,
    check_precision,
    compile_unavailable,
    precision_dtype,
    precision_name,
    resolve_device,
    resolve_precision,
)
from minimind_edu.errors import InvalidArgument
from minimind_edu.train_config import TrainConfig


def test_precision_names_and_dtypes():
    assert PRECISIONS == ("bf16", "fp16", "fp32")
    assert [precision_dtype(p) for p in PRECISIONS] == [torch.bfloat16, torch.float16, torch.float32]
    assert [precision_name(d) for d in (torch.bfloat16, torch.float16, torch.float32)] == list(PRECISIONS)
    assert [precision_name(s) for s in ("bfloat16", "half", "float", "fp16")] == ["bf16", "fp16", "fp32", "fp16"]
    assert autocast_dtype("fp32") is None and autocast_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be bf16, fp16 or fp32, got torch.int8"):
        precision_name(torch.int8)
    with pytest.raises(ValueError, match="precision must be one of bf16, fp16, fp32; got 'int8'"):
        check_precision("int8")
    assert check_precision("auto", allow_auto=True) == "auto"


def test_precision_choice():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    expected = "bf16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "fp32"
    assert resolve_precision("auto", cpu) == expected
    with pytest.raises(ValueError, match="fp16.*needs a GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp16, fp32; got 'int8'"):
        TrainConfig(precision="int8")


def test_autocast_computes_matmuls_in_the_low_precision_only():
    a = torch.ones(2, 2)
    with autocast("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (a @ a).dtype == torch.float32


def test_bad_devices_are_named():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InvalidArgument, match="^device bogus: ") as err:
        resolve_device("bogus")
    assert err.value.argument == "device"
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgument, match="device cuda: asked for, but torch.cuda.is_available"):
            resolve_device("cuda")
    with pytest.raises(InvalidArgument, match="device meta: the course trains on cpu, cuda or mps"):
        resolve_device("meta")  # a real torch device, but one that holds no data
    if not torch.backends.mps.is_available():
        with pytest.raises(InvalidArgument, match="device mps: Apple's MPS is not available here"):
            resolve_device("mps")


def test_compile_is_known_unavailable_without_a_cpp_compiler(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    reason = compile_unavailable(torch.device("cpu"))
    assert reason is not None and "C++ compiler" in reason and "g++" in reason
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/g++" if name == "g++" else None)
    assert compile_unavailable(torch.device("cpu")) is None
    monkeypatch.setattr("shutil.which", lambda name: "/opt/cc/my-cxx" if name == "my-cxx" else None)
    monkeypatch.setenv("CXX", "my-cxx")
    assert compile_unavailable(torch.device("cpu")) is None  # CXX names the compiler, as inductor reads it


def test_a_failed_compile_falls_back_to_the_eager_model_once(monkeypatch):
    calls = {"compiled": 0, "told": []}

    def broken_compile(model):
        def compiled(*args, **kwargs):
            calls["compiled"] += 1
            raise RuntimeError("InductorError: CppCompileError: C++ compile error\n(long log)")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    layer = torch.nn.Linear(3, 2)
    forward = CompiledOrEager(layer, on_fallback=calls["told"].append)
    x = torch.randn(4, 3)
    assert torch.equal(forward(x), layer(x))  # the failed call is answered eagerly
    assert torch.equal(forward(x), layer(x))
    assert calls["compiled"] == 1  # not tried again
    assert calls["told"] == ["RuntimeError: InductorError: CppCompileError: C++ compile error"]
    assert forward.fallback_reason == calls["told"][0]


def test_an_error_that_is_not_the_compilers_is_still_raised(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model: model)  # "compiled" = the model: it fails the same way
    forward = CompiledOrEager(torch.nn.Linear(3, 2))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        forward(torch.randn(4, 5))
