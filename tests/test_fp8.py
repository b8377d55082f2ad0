"""Block-scaled E4M3 weights (framepack_native/fp8.py): quantise / dequantise against a float64 reference within the
bound the format and the scale layout allow (derived in fp8.py's docstring), the layout itself (power-of-two bf16
scales per 128-wide block, dequantised exactly in bf16 / fp16 / fp32), damaged scales refused naming the tensor, and
Fp8Linear: its forward, its rows, its dtype changes."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from framepack_native import fp8
from framepack_native.fp8 import (BLOCK, E4M3_MAX, REL_BOUND, SUB_BOUND, Fp8Linear, check_fp8_pair, dequantize_fp8,
                                  linear_rows, quantize_fp8)


@settings(max_examples=25, deadline=None)
@given(out_f=st.integers(1, 8), blocks=st.integers(1, 4), ragged=st.booleans(), seed=st.integers(0, 2**31),
       log_scale=st.floats(-20, 20))
def test_roundtrip_within_the_format_bound(out_f, blocks, ragged, seed, log_scale):
    in_f = blocks * BLOCK + (7 if ragged else 0)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g, dtype=torch.float64) * 2.0 ** log_scale
    w[:, :3] *= 1e-4  # small values next to large ones: the subnormal end of a block
    w32 = w.float()
    q, scale = quantize_fp8(w32)
    assert torch.equal(w32, w.float())  # the input is left as it was
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.bfloat16
    assert scale.shape == (out_f, 1 if ragged else blocks)
    deq = dequantize_fp8(q, scale, torch.float32).double()
    # q * s exactly, in every dtype it dequantises to (float64 holds the exact product)
    exact = q.double().reshape(out_f, scale.shape[1], -1) * scale.double()[..., None]
    assert torch.equal(deq, exact.reshape(out_f, in_f))
    if -8 < log_scale < 12:  # within float16's range
        assert torch.equal(dequantize_fp8(q, scale, torch.float16).double(), deq)
    assert torch.equal(dequantize_fp8(q, scale, torch.bfloat16).double(), deq)
    s = scale.double().repeat_interleave(in_f // scale.shape[1], dim=1)  # (out, in): each element's scale
    ref = w.float().double()  # the float32 input, exactly
    bound = torch.maximum(REL_BOUND * ref.abs(), SUB_BOUND * s) * (1 + 2 ** -20) + ref.abs() * 2 ** -23
    assert bool(((deq - ref).abs() <= bound).all())
    # the scales are powers of two, and each block's largest magnitude lands in [224, 448] (the scale's definition)
    mantissa, _ = torch.frexp(scale.float())
    assert bool((mantissa == 0.5).all())
    blocks_q = q.float().abs().reshape(out_f, scale.shape[1], -1).amax(dim=2)
    assert bool((blocks_q >= E4M3_MAX / 2).all()) and bool((blocks_q <= E4M3_MAX).all())


def test_zero_blocks_get_unit_scales_and_buffers_are_reused():
    w = torch.zeros(2, 2 * BLOCK)
    w[0, BLOCK:] = torch.linspace(-1, 1, BLOCK)
    q, scale = quantize_fp8(w)
    assert scale[0, 0] == 1 and scale[1].tolist() == [1.0, 1.0] and scale[0, 1] == 2.0 ** -8  # 1 / 448 -> 2^-8
    buffer = torch.empty(2, 2 * BLOCK, dtype=torch.bfloat16)
    out = dequantize_fp8(q, scale, out=buffer)
    assert out.data_ptr() == buffer.data_ptr() and torch.equal(out[1], torch.zeros(2 * BLOCK, dtype=torch.bfloat16))


def test_refusals():
    with pytest.raises(ValueError, match="2-D weight"):
        quantize_fp8(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_fp8(torch.tensor([[float("nan")] * BLOCK]))
    q, scale = quantize_fp8(torch.randn(4, 2 * BLOCK))
    check_fp8_pair("blocks.0.attn.to_q.weight", q, scale)
    bad = {"wrong shape": scale[:, :1], "zero": scale.clone().index_fill_(1, torch.tensor([0]), 0.0),
           "NaN": scale.clone().fill_(float("nan")), "negative": -scale, "float32": scale.float()}
    for what, s in bad.items():
        with pytest.raises(ValueError, match=r"blocks\.0\.attn\.to_q\.weight: its scale"):
            check_fp8_pair("blocks.0.attn.to_q.weight", q, s)
    with pytest.raises(ValueError, match="must be 2-D float8_e4m3fn"):
        check_fp8_pair("w", q.float(), scale)


def test_fp8_linear_forward_rows_and_dtype_changes():
    torch.manual_seed(0)
    linear = torch.nn.Linear(2 * BLOCK, 48)
    layer = Fp8Linear.from_linear(linear)
    x = torch.randn(3, 5, 2 * BLOCK)
    w = dequantize_fp8(layer.weight, layer.scale_weight, torch.float32)
    with torch.no_grad():
        expected = torch.nn.functional.linear(x, w, linear.bias)
        assert torch.equal(layer(x), expected)
        assert torch.equal(linear_rows(layer, x, 8, 40), expected[..., 8:40])
    assert torch.equal(layer(x), expected)  # with autograd on: a fresh weight, not the shared workspace
    layer.to(torch.bfloat16)  # the compute dtype changes; the fp8 values and their scales do not
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.scale_weight.dtype == torch.bfloat16
    assert layer.bias.dtype == torch.bfloat16
    assert torch.equal(dequantize_fp8(layer.weight, layer.scale_weight, torch.float32), w)
    with torch.no_grad():
        assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_row_chunks_change_nothing(monkeypatch):
    w = torch.randn(37, 3 * BLOCK) * torch.logspace(-3, 2, 37)[:, None]
    q, scale = quantize_fp8(w)
    for elements in (2 * 3 * BLOCK, 1):  # two rows a chunk, then one
        monkeypatch.setattr(fp8, "CHUNK_ELEMENTS", elements)
        q2, scale2 = quantize_fp8(w)
        assert torch.equal(q2.view(torch.uint8), q.view(torch.uint8)) and torch.equal(scale2, scale)


def test_the_shared_workspace_serves_inference_mode_then_no_grad():
    from framepack_native.fp8 import release_workspaces
    release_workspaces()
    layer = Fp8Linear.from_linear(torch.nn.Linear(BLOCK, 8))
    x = torch.randn(2, BLOCK)
    with torch.inference_mode():
        first = layer(x)  # the workspace is made here
    with torch.no_grad():
        assert torch.equal(layer(x), first)
