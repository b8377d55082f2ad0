"""Triton kernels run in Triton's CPU interpreter against float64 torch references (kernels.reference).

Run only through tests/test_kernels.py, which starts `python -m pytest` on this file with TRITON_INTERPRET=1 in
a fresh process: the variable must be set before triton is first imported, and the rest of the suite must not
see it. The file name does not match test_*.py, so a plain `pytest tests/` does not collect it.
Outputs are poisoned: under torch.use_deterministic_algorithms the launchers' torch.empty buffers hold NaN, so
an element the kernel never writes fails the comparison.
"""
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import kernels
from kernels import reference, triton_util
from tests.reference.common import rel_l2

assert triton_util.INTERPRET, "run with TRITON_INTERPRET=1 set before triton is imported (see tests/test_kernels.py)"

# The tolerances: relative L2 error against a float64 reference.
TOL = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 2e-2}
DTYPES = list(TOL)
# No shrinking: in the interpreter it can take minutes; the first failing example is reported as drawn.
SETTINGS = settings(
    max_examples=100, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)


def setup_module():
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True


def teardown_module():
    torch.use_deterministic_algorithms(False)


def key_mask(kind, B, Lk, gen):
    """A (B, Lk) bool key mask: None, random, text-style padding (a different valid length per batch),
    or padding with batch 0 fully masked (its rows must come out 0, as in torch's SDPA)."""
    if kind == "none":
        return None
    if kind == "random":
        return torch.rand(B, Lk, generator=gen) < 0.7
    lengths = torch.randint(1, Lk + 1, (B,), generator=gen)
    if kind == "empty_row":
        lengths[0] = 0
    return torch.arange(Lk)[None, :] < lengths[:, None]  # (B, Lk)


def key_lengths(kind, B, Lk, gen):
    """(B,) int32 valid key counts for kv_lens: "lens" in [1, Lk]; "lens_edges" also 0 and past Lk (clamped)."""
    lengths = torch.randint(1, Lk + 1, (B,), generator=gen, dtype=torch.int32)
    if kind == "lens_edges":
        lengths[0] = 0
        lengths[-1] = Lk + 5 if B > 1 else lengths[-1]
    return lengths


def check_attention(B, Lq, Lk, N, Dh, dtype, mask_kind, seed, scale=None):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Lq, N, Dh, generator=gen).to(dtype)
    k = torch.randn(B, Lk, N, Dh, generator=gen).to(dtype)
    v = torch.randn(B, Lk, N, Dh, generator=gen).to(dtype)
    if mask_kind.startswith("lens"):
        lens, mask = key_lengths(mask_kind, B, Lk, gen), None
        ref_mask = torch.arange(Lk)[None, :] < lens[:, None]  # (B, Lk)
    else:
        lens, mask = None, key_mask(mask_kind, B, Lk, gen)
        ref_mask = mask
    inputs = [t.clone() for t in (q, k, v)]
    out = kernels.attention(q, k, v, kv_mask=mask, kv_lens=lens, scale=scale, backend="triton")
    ref = reference.attention(q.double(), k.double(), v.double(), kv_mask=ref_mask, scale=scale)
    assert out.dtype == dtype and out.shape == (B, Lq, N, Dh)
    assert not out.isnan().any(), "unwritten (NaN-poisoned) or NaN output elements"
    err = rel_l2(out, ref)
    assert err < TOL[dtype], f"rel. error {err:.2e} >= {TOL[dtype]:.0e} ({dtype}, mask {mask_kind})"
    if ref_mask is not None and not ref_mask.any(1).all():
        assert out[~ref_mask.any(1)].eq(0).all(), "a row with no key to attend must come out 0"
    assert all(torch.equal(a, b) for a, b in zip(inputs, (q, k, v))), "the kernel mutated its inputs"


def test_outputs_are_poisoned():
    assert torch.empty(3, 5).isnan().all() and torch.empty(4, dtype=torch.bfloat16).isnan().all()


@SETTINGS
@given(
    B=st.integers(1, 3), Lq=st.integers(1, 70), Lk=st.integers(1, 70), N=st.integers(1, 3),
    Dh=st.sampled_from([64, 128]), dtype=st.sampled_from(DTYPES),
    mask_kind=st.sampled_from(["none", "random", "padding", "empty_row", "lens", "lens_edges"]),
    seed=st.integers(0, 2**31),
)
def test_attention_matches_float64(B, Lq, Lk, N, Dh, dtype, mask_kind, seed):
    check_attention(B, Lq, Lk, N, Dh, dtype, mask_kind, seed)


def test_attention_long_odd_sequence_one_head():
    # L = 217: 7 query blocks of 32 with a tail, 13 whole key blocks of 16 and a tail of 9.
    for Dh, dtype in ((64, torch.float32), (128, torch.bfloat16)):
        check_attention(1, 217, 217, 1, Dh, dtype, "none", seed=Dh)
        check_attention(1, 217, 217, 1, Dh, dtype, "padding", seed=Dh + 1, scale=0.05)
        check_attention(1, 217, 217, 1, Dh, dtype, "lens", seed=Dh + 2)


def test_attention_batches_with_different_masks():
    check_attention(3, 45, 77, 2, 128, torch.float16, "padding", seed=3)
    check_attention(3, 45, 77, 2, 64, torch.float32, "empty_row", seed=4)
    check_attention(3, 45, 77, 2, 128, torch.bfloat16, "lens_edges", seed=5)


def test_attention_kv_lens_int64_strided_and_out_of_range():
    # kv_lens as the torch path reads it: int64 values past int32 and below 0 clamp to [0, Lk]; a strided view.
    gen = torch.Generator().manual_seed(6)
    B, L, N, Dh = 4, 37, 2, 64
    q, k, v = (torch.randn(B, L, N, Dh, generator=gen) for _ in range(3))
    table = torch.tensor([[2**32 + 3, 0], [-2**32 + 3, 0], [5, 0], [L, 0]])  # (B, 2) int64
    lens = table[:, 0]  # stride 2
    out = kernels.attention(q, k, v, kv_lens=lens, backend="triton")
    mask = torch.arange(L)[None, :] < lens.clamp(0, L)[:, None]  # all, none, 5 keys, all
    ref = reference.attention(q.double(), k.double(), v.double(), kv_mask=mask)
    assert not out.isnan().any() and out[1].eq(0).all()
    assert rel_l2(out, ref.masked_fill(~mask.any(1)[:, None, None, None], 0)) < TOL[torch.float32]


def test_attention_strided_views_of_a_fused_projection():
    # q/k/v as slices of one (B, L, 3, N, Dh) tensor, and a mask sliced from a wider one: read in place.
    gen = torch.Generator().manual_seed(5)
    B, L, N, Dh = 2, 50, 3, 64
    qkv = torch.randn(B, L, 3, N, Dh, generator=gen)
    q, k, v = qkv.unbind(2)  # (B, L, N, Dh) each, not contiguous
    mask = (torch.rand(B, 2 * L, generator=gen) < 0.8)[:, ::2]  # (B, L), stride 2
    out = kernels.attention(q, k, v, kv_mask=mask, backend="triton")
    ref = reference.attention(q.double(), k.double(), v.double(), kv_mask=mask)
    assert rel_l2(out, ref) < TOL[torch.float32]


def rope_inputs(B, L, N, Dh, n, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, N, Dh, generator=gen).to(dtype) * 3
    weight = (1 + 0.5 * torch.randn(Dh, generator=gen)).to(dtype)
    angles = torch.rand(n, Dh // 2, generator=gen) * 2 * torch.pi
    angles = angles.repeat_interleave(2, dim=-1)  # (n, Dh): each angle for both members of its pair
    return x, weight, angles.cos(), angles.sin()


@SETTINGS
@given(
    B=st.integers(1, 3), L=st.integers(1, 60), N=st.integers(1, 4), Dh=st.sampled_from([32, 64, 128]),
    dtype=st.sampled_from(DTYPES), n_frac=st.sampled_from([None, 0.0, 0.3, 1.0]), seed=st.integers(0, 2**31),
)
def test_rms_norm_rope_matches_float64(B, L, N, Dh, dtype, n_frac, seed):
    n_rope = None if n_frac is None else round(n_frac * L)
    n = L if n_rope is None else n_rope
    x, weight, cos, sin = rope_inputs(B, L, N, Dh, n, dtype, seed)
    x_before = x.clone()
    out = kernels.rms_norm_rope(x, weight, cos, sin, eps=1e-6, n_rope=n_rope, backend="triton")
    ref = reference.rms_norm_rope(x.double(), weight.double(), cos.double(), sin.double(), 1e-6, n_rope=n_rope)
    assert out.dtype == dtype and not out.isnan().any()
    err = rel_l2(out, ref)
    assert err < TOL[dtype], f"rel. error {err:.2e} ({dtype}, n_rope {n_rope} of {L})"
    # Tokens past n_rope are normalised only: they match the plain RMSNorm reference.
    if n < L:
        tail = reference.rms_norm(x[:, n:].double(), weight.double(), 1e-6)
        assert rel_l2(out[:, n:], tail) < TOL[dtype]
    assert torch.equal(x, x_before), "the kernel mutated its input"


@SETTINGS
@given(
    B=st.integers(1, 2), L=st.integers(1, 60), N=st.integers(1, 3), Dh=st.sampled_from([64, 128]),
    dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31),
)
def test_apply_rope_matches_float64(B, L, N, Dh, dtype, seed):
    x, _, cos, sin = rope_inputs(B, L, N, Dh, L, dtype, seed)
    x = x.transpose(1, 2).contiguous().transpose(1, 2)  # (B, L, N, Dh) with heads outermost in memory
    out = kernels.apply_rope(x, cos, sin, backend="triton")
    ref = reference.apply_rope(x.double(), cos.double(), sin.double())
    assert out.dtype == dtype and not out.isnan().any()
    assert rel_l2(out, ref) < TOL[dtype]


def test_auto_on_cpu_stays_on_torch_in_the_interpreter():
    x, weight, cos, sin = rope_inputs(1, 9, 2, 64, 9, torch.float32, 0)
    assert torch.equal(kernels.apply_rope(x, cos, sin), reference.apply_rope(x, cos, sin))
    assert torch.equal(kernels.attention(x, x, x), reference.attention(x, x, x))


def test_transformer_triton_backend_matches_its_torch_path():
    from framepack_native.models.transformer import FramePackTransformer, FramePackTransformerConfig
    from framepack_native.sections import section_frame_indices
    from tests.reference.common import perturb_

    # The tiny preset with head dim 64, the smallest the attention kernel takes; text lengths 7 and 3 mask keys.
    config = FramePackTransformerConfig.tiny(attention_head_dim=64, rope_axes_dim=(16, 24, 24))
    torch.manual_seed(0)
    model = perturb_(FramePackTransformer(config), seed=1).eval()
    gen = torch.Generator().manual_seed(2)
    B, C, T, H, W = 2, config.in_channels, 2, 4, 6
    lat, clean, h2, h4 = section_frame_indices("inverted_anti_drifting", T, 1)
    text_mask = (torch.arange(9)[None, :] < torch.tensor([[7], [3]])).long()  # (B, Lt)
    inputs = dict(
        hidden_states=torch.randn(B, C, T, H, W, generator=gen), timestep=torch.tensor([700.0, 30.0]),
        encoder_hidden_states=torch.randn(B, 9, config.text_embed_dim, generator=gen),
        encoder_attention_mask=text_mask,
        pooled_projections=torch.randn(B, config.pooled_projection_dim, generator=gen),
        image_embeds=torch.randn(B, 5, config.image_proj_dim, generator=gen), indices_latents=lat,
        guidance=torch.tensor([6000.0, 9000.0]),
        latents_clean=torch.randn(B, C, len(clean), H, W, generator=gen), indices_latents_clean=clean,
        latents_history_2x=torch.randn(B, C, len(h2), H, W, generator=gen), indices_latents_history_2x=h2,
        latents_history_4x=torch.randn(B, C, len(h4), H, W, generator=gen), indices_latents_history_4x=h4,
    )
    with torch.no_grad():
        model.kernel_backend = "torch"
        expected = model(**inputs)
        model.kernel_backend = "triton"
        got = model(**inputs)
    assert not got.isnan().any()
    err = rel_l2(got, expected)
    assert err < 1e-4, f"transformer, backend='triton' vs 'torch': rel. error {err:.2e}"
