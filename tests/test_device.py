"""Device and precision: the names a learner types, the dtypes they mean, and what "auto" picks."""
from __future__ import annotations

import pytest
import torch

from minimind_edu.device import (
    PRECISIONS,
    autocast,
    autocast_dtype,
    check_precision,
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
