"""Frozen features: the fast evaluation pass (channels_last, bf16 autocast where native) against
the encoder as it is."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from replearn.data import load_data
from replearn.dist import native_bf16
from replearn.evaluate.features import extract_features
from replearn.nn import build_backbone


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", "test")


def _encoder():
    torch.manual_seed(0)
    return build_backbone("convnet", 1, 8, 8)


def test_precision_32_runs_the_encoder_as_it_is(digits):
    enc = _encoder()
    params = [p.clone() for p in enc.parameters()]
    x = torch.stack([(digits.images[i].float() / 255 - digits.mean[0]) / digits.std[0] for i in range(5)])
    want = enc.eval()(x)
    got = extract_features(enc.train(), digits, batch_size=3)[:5]
    torch.testing.assert_close(got, want)
    assert enc.training  # its mode is given back
    assert all(p.is_contiguous() for p in enc.parameters())  # not converted
    assert all(torch.equal(a, b) for a, b in zip(params, enc.parameters(), strict=True))


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_fast_pass_matches_the_plain_one(digits, precision):
    plain = extract_features(_encoder(), digits, batch_size=64)
    enc = _encoder()
    fast = extract_features(enc, digits, batch_size=64, precision=precision)
    assert fast.dtype == torch.float32 and fast.shape == plain.shape
    conv = next(m for m in enc.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    cos = F.cosine_similarity(fast, plain, dim=1)
    if precision == "bf16" or native_bf16("cpu"):  # bf16 rounding: close, not equal
        assert cos.min() > 0.99 and not torch.equal(fast, plain)
    else:  # auto on a CPU without native bf16: channels_last only, fp32
        assert cos.min() > 0.99999


def test_bad_precision_is_refused(digits):
    with pytest.raises(ValueError, match="precision"):
        extract_features(_encoder(), digits, precision="16")


def test_native_bf16_reads_the_cpu_flags():
    flags = open("/proc/cpuinfo").read()
    assert native_bf16("cpu") == ("amx_bf16" in flags or "avx512_bf16" in flags)
    assert native_bf16("meta") is False
