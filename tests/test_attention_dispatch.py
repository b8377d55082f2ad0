"""The attention dispatcher's rule (kernels/dispatch.py), on the CPU with mocked tables and a mocked CUDA device:
SDPA's cuDNN backend only for an unmasked call whose nearest measured length (same device, dtype, head dim, within
a factor of 2) timed cuDNN faster, our kernel otherwise; the choice is what attention_backend_for says and what
kernels.attention runs; the unmasked SDPA call keeps the (B, L, N, Dh) layout; damaged tables are named."""
import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import kernels
from kernels import dispatch, reference

H200 = "NVIDIA H200"


def entry(tokens, triton_ms, cudnn_ms, device=H200, dtype="bfloat16", head_dim=128):
    return {"device": device, "dtype": dtype, "head_dim": head_dim, "tokens": tokens, "triton_ms": triton_ms,
            "cudnn_ms": cudnn_ms}


TABLE = [entry(4096, 1.0, 0.8), entry(16384, 10.0, 11.0)]  # cuDNN faster at 4k, ours at 16k


@pytest.mark.parametrize("tokens, masked, device, dtype, head_dim, want", [
    (4096, False, H200, "bfloat16", 128, "cudnn"),
    (5000, False, H200, "bfloat16", 128, "cudnn"),      # nearest: 4096 (x1.22) rather than 16384 (x3.3)
    (2048, False, H200, "bfloat16", 128, "cudnn"),      # exactly a factor 2 below 4096: still within reach
    (2047, False, H200, "bfloat16", 128, "triton"),     # past the reach of every measurement
    (12000, False, H200, "bfloat16", 128, "triton"),    # nearest: 16384 (x1.37) where ours is faster
    (8192, False, H200, "bfloat16", 128, "cudnn"),      # x2 from both: the shorter on a tie
    (40000, False, H200, "bfloat16", 128, "triton"),    # beyond 2 x 16384: not measured
    (4096, True, H200, "bfloat16", 128, "triton"),      # a mask or kv_lens: our kernel skips / masks keys
    (4096, False, "NVIDIA H100", "bfloat16", 128, "triton"),
    (4096, False, H200, "float16", 128, "triton"),
    (4096, False, H200, "bfloat16", 64, "triton"),
])
def test_choose_backend_by_hand(tokens, masked, device, dtype, head_dim, want):
    assert dispatch.choose_backend(device, dtype, head_dim, tokens, masked, TABLE) == want


entries = st.lists(st.builds(entry, st.integers(64, 1 << 16), st.floats(0.01, 100), st.floats(0.01, 100)),
                   max_size=6)


@settings(max_examples=200, deadline=None)
@given(entries, st.integers(16, 1 << 17), st.booleans())
def test_choose_backend_property(table, tokens, masked):
    """cuDNN is chosen exactly when the call is unmasked and some measurement within reach, with none nearer,
    timed cuDNN faster (ties in distance go to the shorter measurement)."""
    got = dispatch.choose_backend(H200, "bfloat16", 128, tokens, masked, table)
    reach = [e for e in table if max(tokens / e["tokens"], e["tokens"] / tokens) <= dispatch.REACH]
    if masked or not reach:
        assert got == "triton"
        return
    d = min(abs(math.log(tokens / e["tokens"])) for e in reach)
    nearest = [e for e in reach if abs(math.log(tokens / e["tokens"])) == d]
    shortest = min(e["tokens"] for e in nearest)
    verdicts = {e["cudnn_ms"] < e["triton_ms"] for e in nearest if e["tokens"] == shortest}
    if len(verdicts) == 1:  # two measurements of one length that disagree: either answer is a measured one
        assert got == ("cudnn" if verdicts.pop() else "triton")


@pytest.fixture
def fake_cuda(monkeypatch):
    """CPU tensors treated as an H200's: Triton 'usable', the device name mocked; records SDPA cuDNN calls."""
    monkeypatch.setattr(kernels, "_use_triton", lambda backend, name, tensors, unsupported: backend != "torch")
    monkeypatch.setattr(dispatch, "device_name", lambda device: H200)
    calls = []

    def cudnn(q, k, v, scale, sdp_backend):
        calls.append(sdp_backend)
        return kernels.sdpa_attention.__wrapped__(q, k, v, scale, torch.nn.attention.SDPBackend.MATH)
    cudnn.__wrapped__ = kernels.sdpa_attention
    monkeypatch.setattr(kernels, "sdpa_attention", cudnn)
    return calls


def qkv(L, dtype=torch.float32, B=1, N=2, Dh=128):
    gen = torch.Generator().manual_seed(L)
    return [torch.randn(B, L, N, Dh, generator=gen, dtype=dtype) for _ in range(3)]


def test_attention_runs_what_the_dispatcher_says(fake_cuda, monkeypatch):
    """kernels.attention under "auto" takes SDPA's cuDNN path exactly where attention_backend_for says "cudnn", and
    gives the reference's output there; a forced backend is never redirected."""
    table = [entry(64, 1.0, 0.5, dtype="float32")]
    monkeypatch.setattr(dispatch, "table", lambda: table)
    q, k, v = qkv(64)
    assert kernels.dispatch.attention_backend_for(q, k, v) == "cudnn"
    out = kernels.attention(q, k, v)
    assert fake_cuda == [torch.nn.attention.SDPBackend.CUDNN_ATTENTION]
    want = reference.attention(q, k, v)
    assert ((out - want).norm() / want.norm()).item() < 1e-5
    lens = torch.tensor([60])
    assert kernels.dispatch.attention_backend_for(q, k, v, kv_lens=lens) == "triton"
    assert kernels.dispatch.attention_backend_for(q, k, v, backend="triton") == "triton"
    assert kernels.dispatch.attention_backend_for(q, k, v, backend="torch") == "torch"
    table[0] = entry(64, 0.5, 1.0, dtype="float32")  # now ours is faster
    assert kernels.dispatch.attention_backend_for(q, k, v) == "triton"


def test_cpu_calls_stay_on_torch():
    q, k, v = qkv(32)
    assert kernels.dispatch.attention_backend_for(q, k, v) == "torch"


@pytest.mark.parametrize("Lq, Lk", [(40, 40), (17, 33)])
def test_unmasked_sdpa_keeps_the_layout(Lq, Lk):
    """sdpa_attention (the cuDNN path's call, here on SDPA's math backend) equals the reference in (B, L, N, Dh)."""
    q = qkv(Lq, B=2)[0]
    k, v = qkv(Lk, B=2)[1:]
    out = kernels.sdpa_attention(q, k, v, 0.3, torch.nn.attention.SDPBackend.MATH)
    assert out.shape == q.shape
    want = reference.attention(q, k, v, scale=0.3)
    assert ((out - want).norm() / want.norm()).item() < 1e-5  # SDPA's math and CPU flash backends: ~1e-7


def test_tables_load_and_damaged_ones_are_named(tmp_path, monkeypatch):
    path = tmp_path / "table.json"
    assert dispatch.load_table(path) == []  # no file: no measurements
    path.write_text(json.dumps({"format": 1, "entries": TABLE}))
    assert dispatch.load_table(path) == TABLE
    monkeypatch.setenv(dispatch.TABLE_ENV, str(path))
    monkeypatch.setattr(dispatch, "_tables", {})
    assert dispatch.load_table() == TABLE and dispatch.table() == TABLE
    path.write_text(json.dumps({"format": 1, "entries": []}))
    assert dispatch.table() == TABLE  # read once per process: a call does not stat the file
    for text in ["{", json.dumps({"format": 2, "entries": []}), json.dumps({"format": 1, "entries": [{"x": 1}]}),
                 json.dumps({"format": 1, "entries": [dict(TABLE[0], cudnn_ms=float("nan"))]}).replace("NaN", "-1")]:
        path.write_text(text)
        with pytest.raises(ValueError, match="table.json"):
            dispatch.load_table(path)
