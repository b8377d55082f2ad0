"""Block-scaled E4M3 weights (framepack_native/fp8.py, issue 18's building block): quantise / dequantise against a float64
reference within the bound the format and the scale layout allow (derived in fp8.py's docstring), the layout itself,
and damaged scales refused naming the tensor."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from framepack_native.fp8 import (BLOCK, E4M3_MAX, REL_BOUND, SUB_BOUND, check_fp8_pair, dequantize_fp8,
                                  quantize_fp8)


@settings(max_examples=25, deadline=None)
@given(out_f=st.integers(1, 8), blocks=st.integers(1, 4), ragged=st.booleans(), seed=st.integers(0, 2**31),
       log_scale=st.floats(-20, 20))
def test_roundtrip_within_the_format_bound(out_f, blocks, ragged, seed, log_scale):
    in_f = blocks * BLOCK + (7 if ragged else 0)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g, dtype=torch.float64) * 2.0 ** log_scale
    w[:, :3] *= 1e-4  # small values next to large ones: the subnormal end of a block
    q, scale = quantize_fp8(w.float())
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert scale.shape == (out_f, 1 if ragged else blocks)
    deq = dequantize_fp8(q, scale, torch.float32).double()
    s = scale.double().repeat_interleave(in_f // scale.shape[1], dim=1)  # (out, in): each element's scale
    ref = w.float().double()  # the float32 input, exactly
    bound = torch.maximum(REL_BOUND * ref.abs(), SUB_BOUND * s) * (1 + 2 ** -20) + ref.abs() * 2 ** -23
    assert bool(((deq - ref).abs() <= bound).all())
    # each block's largest magnitude lands on E4M3's largest value (the scale's definition)
    blocks_q = q.float().abs().reshape(out_f, scale.shape[1], -1).amax(dim=2)
    assert torch.equal(blocks_q, torch.full_like(blocks_q, E4M3_MAX))


def test_zero_blocks_get_unit_scales_and_buffers_are_reused():
    w = torch.zeros(2, 2 * BLOCK)
    w[0, BLOCK:] = torch.linspace(-1, 1, BLOCK)
    q, scale = quantize_fp8(w)
    assert scale[0, 0] == 1 and scale[1].tolist() == [1.0, 1.0] and scale[0, 1] == 1 / E4M3_MAX
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
           "NaN": scale.clone().fill_(float("nan")), "negative": -scale, "float16": scale.half()}
    for what, s in bad.items():
        with pytest.raises(ValueError, match=r"blocks\.0\.attn\.to_q\.weight: its scale"):
            check_fp8_pair("blocks.0.attn.to_q.weight", q, s)
    with pytest.raises(ValueError, match="must be 2-D float8_e4m3fn"):
        check_fp8_pair("w", q.float(), scale)
