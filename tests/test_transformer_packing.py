"""Property tests of the history packing helpers: replicate padding, pooled RoPE tables, token counts, frame indices.

The pooled tables are checked against diffusers' formula written out directly (full 3D table, replicate pad,
avg_pool3d), which our per-axis version must equal.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from framepack_native.models.transformer_embed import HistoryPatchEmbed
from framepack_native.sections import padding_schedule, section_frame_indices
from framepack_native.models.transformer_packing import (
    HISTORY_KERNELS,
    history_tokens,
    pad_to_multiple,
    pool_rows,
    rope_table,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


SETTINGS = settings(max_examples=40, deadline=None)
sizes = st.integers(1, 11)
kernel = st.tuples(st.integers(1, 4), st.integers(1, 8), st.integers(1, 8))
axes = st.sampled_from([(2, 2, 2), (4, 6, 6), (2, 4, 10), (16, 56, 56)])


@SETTINGS
@given(t=sizes, h=sizes, w=sizes, k=kernel)
def test_pad_to_multiple_replicates_edges(t, h, w, k):
    x = torch.randn(2, 3, t, h, w)
    y = pad_to_multiple(x, k)
    assert y.shape[2:] == tuple(math.ceil(s / kk) * kk for s, kk in zip((t, h, w), k))
    ti, hi, wi = (torch.arange(n).clamp_max(s - 1) for n, s in zip(y.shape[2:], (t, h, w)))
    assert torch.equal(y, x[:, :, ti][:, :, :, hi][:, :, :, :, wi])


@SETTINGS
@given(n=st.integers(1, 30), d=st.integers(1, 5), k=st.integers(1, 5), value=st.floats(-3, 3))
def test_pool_rows_of_a_constant_stays_constant(n, d, k, value):
    pooled = pool_rows(torch.full((n, d), value), k)
    assert pooled.shape == (math.ceil(n / k), d)
    torch.testing.assert_close(pooled, torch.full_like(pooled, value))


def diffusers_pooled_table(indices, h, w, axes_dim, pool):
    """The full table padded (replicate) and avg-pooled in 3D, as diffusers' _pad_rotary_emb."""
    cos, sin = rope_table(indices, h, w, axes_dim, 256.0)
    out = []
    for table in (cos, sin):
        grid = table.T.reshape(1, -1, len(indices), h, w)  # (1, Dh, T, h, w)
        grid = F.avg_pool3d(pad_to_multiple(grid, (pool,) * 3), pool, stride=pool)
        out.append(grid.flatten(2)[0].T)  # (L, Dh)
    return out


@SETTINGS
@given(t=sizes, h=sizes, w=sizes, pool=st.sampled_from([1, 2, 4]), axes_dim=axes, start=st.integers(0, 40))
def test_pooled_rope_matches_3d_pad_and_pool(t, h, w, pool, axes_dim, start):
    indices = torch.arange(start, start + t)
    cos, sin = rope_table(indices, h, w, axes_dim, 256.0, pool=pool)
    ref_cos, ref_sin = diffusers_pooled_table(indices, h, w, axes_dim, pool)
    # both sides average n = pool^3 float32 values in [-1, 1], summed in different orders: each mean is within
    # (n - 1) u of the exact one (u = 2^-24, the summation bound), and one rounding of the result, so 2 n u apart
    bound = 2 * pool**3 * 2.0**-24
    torch.testing.assert_close(cos, ref_cos, atol=bound, rtol=0)
    torch.testing.assert_close(sin, ref_sin, atol=bound, rtol=0)


@SETTINGS
@given(t=sizes, h=sizes, w=sizes, pool=st.sampled_from([2, 4]), frame=st.integers(0, 50))
def test_pooled_rope_of_a_constant_frame_keeps_its_time_columns(t, h, w, pool, frame):
    axes_dim = (4, 6, 6)
    cos, sin = rope_table(torch.full((t,), frame), h, w, axes_dim, 256.0, pool=pool)
    one_cos, one_sin = rope_table(torch.tensor([frame]), 1, 1, axes_dim, 256.0)
    torch.testing.assert_close(cos[:, :4], one_cos[:, :4].expand(cos.shape[0], -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[:, :4], one_sin[:, :4].expand(sin.shape[0], -1), atol=1e-6, rtol=0)


@SETTINGS
@given(t=sizes, h=st.integers(1, 9).map(lambda x: 2 * x), w=st.integers(1, 9).map(lambda x: 2 * x),
       scale=st.sampled_from(["1x", "2x", "4x"]))
def test_history_tokens_match_embedder_and_rope(t, h, w, scale):
    if scale == "1x":
        t = 1 + t % 3
    with torch.device("meta"):
        embed = HistoryPatchEmbed(1, 1)
        tokens = embed(torch.empty(1, 1, t, h, w), scale)
    pool = {"1x": 1, "2x": 2, "4x": 4}[scale]
    cos, _ = rope_table(torch.arange(t), h // 2, w // 2, (2, 2, 2), 256.0, pool=pool)
    assert tokens.shape[1] == history_tokens(t, h, w, scale) == cos.shape[0]
    assert HISTORY_KERNELS[scale][1] == 2 * pool


@SETTINGS
@given(mode=st.sampled_from(["inverted_anti_drifting", "vanilla"]), window=st.integers(1, 12),
       padding=st.integers(0, 30), hist=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 20)))
def test_section_frame_indices_partition_the_timeline(mode, window, padding, hist):
    padding = padding if mode == "inverted_anti_drifting" else 0
    latents, clean, h2, h4 = section_frame_indices(mode, window, padding, hist)
    assert (len(latents), len(clean), len(h2), len(h4)) == (window, 1 + hist[0], hist[1], hist[2])
    used = torch.cat((latents, clean, h2, h4))
    assert used.unique().numel() == used.numel()  # disjoint
    total = 1 + padding + window + sum(hist)
    assert torch.equal(used.sort().values, torch.cat((torch.arange(1), torch.arange(1 + padding, total))))
    assert clean[0] == 0  # the start image
    for part in (latents, h2, h4):  # contiguous runs
        assert torch.all(part[1:] - part[:-1] == 1)
    if mode == "inverted_anti_drifting":  # the history is the already generated future, right after the window
        assert latents[0] == 1 + padding and clean[1] == latents[-1] + 1 and h2[0] == clean[-1] + 1
    else:  # the window comes last, right after the 1x history; the coarsest history is the oldest
        assert latents[-1] == total - 1 and clean[-1] == latents[0] - 1 and h4[0] == 1 and h2[0] == h4[-1] + 1


@given(n=st.integers(1, 40))
def test_padding_schedule(n):
    p = padding_schedule(n)
    assert len(p) == n and p[-1] == 0 and p[0] == min(n - 1, 3)
    assert all(a >= b for a, b in zip(p, p[1:]))
