"""HunyuanVideoVAE vs diffusers' AutoencoderKLHunyuanVideo: random perturbed weights saved with save_pretrained,
converted by weights_convert, loaded by from_pretrained; float32 on the CPU, relative L2 error < 1e-4.
"""
import contextlib
import copy

import pytest
import torch

import framepack_native.models.vae_blocks as vae_blocks
import weights_convert
from framepack_native.models.vae import HunyuanVideoVAE
from tests.reference.common import rel_l2
from tests.reference.vae import VAE_REAL, VAE_TINY, build_vae, load_reference

TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def flush_denormals():
    """The tiny random models' SiLUs underflow into subnormal floats, ~50x slower on x86 CPUs; flushing them to
    zero (for both models alike) keeps these tests fast without changing any compared number measurably."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def tiny(reference_store, tmp_path_factory):
    """(diffusers model, native folder) for the tiny config."""
    src = reference_store.get("vae_tiny", lambda p: build_vae(p, seed=1, **VAE_TINY))
    dst = tmp_path_factory.mktemp("vae_tiny") / "native"
    weights_convert.convert(src, dst)
    return load_reference(src), dst


TILE_ATTRS = ("use_tiling", "tile_sample_min_height", "tile_sample_min_width", "tile_sample_min_num_frames",
              "tile_sample_stride_height", "tile_sample_stride_width", "tile_sample_stride_num_frames")


@contextlib.contextmanager
def tiling(ref, model, settings):
    """enable_tiling(**settings) on both; the shared reference gets its previous settings back afterwards."""
    saved = {k: getattr(ref, k) for k in TILE_ATTRS}
    if settings:
        ref.enable_tiling(**settings)
        model.enable_tiling(**settings)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ref, k, v)


def ours(folder, dtype=torch.float32):
    return HunyuanVideoVAE.from_pretrained(folder, dtype=dtype, device="cpu")


def video(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def latents(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("frames", [1, 2, 3, 5, 9, 13])
def test_encode_matches_diffusers(tiny, frames):
    ref, folder = tiny
    x = video(2, 3, frames, 40, 56, seed=frames)
    with torch.no_grad():
        expected = ref.encode(x).latent_dist
    post = ours(folder).encode(x)
    assert post.mean.shape == (2, 4, (frames - 1) // 4 + 1, 5, 7)
    assert rel_l2(post.mean, expected.mean) < TOL
    assert rel_l2(post.logvar, expected.logvar) < TOL


@pytest.mark.parametrize("frames", [1, 5, 9, 13])
def test_decode_matches_diffusers(tiny, frames):
    ref, folder = tiny
    z = latents(2, 4, (frames - 1) // 4 + 1, 5, 7, seed=frames)
    with torch.no_grad():
        expected = ref.decode(z).sample
    out = ours(folder).decode(z)
    assert out.shape == (2, 3, frames, 40, 56)
    assert rel_l2(out, expected) < TOL


def test_sample_draws_like_diffusers(tiny):
    ref, folder = tiny
    x = video(2, 3, 5, 24, 32, seed=3)
    with torch.no_grad():
        expected = ref.encode(x).latent_dist
    post = ours(folder).encode(x)
    z_ref = expected.sample(generator=torch.Generator().manual_seed(7))
    z = post.sample(generator=torch.Generator().manual_seed(7))
    assert rel_l2(z, z_ref) < TOL
    # the noise itself is identical: same shape, order, dtype and generator consumption
    torch.testing.assert_close((z - post.mean) / post.std, (z_ref - expected.mean) / expected.std,
                               rtol=1e-4, atol=1e-4)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 12)]  # noqa: E731
    assert rel_l2(post.sample(generator=gens()), expected.sample(generator=gens())) < TOL
    assert rel_l2(post.sample(generator=torch.Generator().manual_seed(8)), z_ref) > 0.1


TILES = dict(tile_sample_min_height=32, tile_sample_min_width=48, tile_sample_stride_height=24,
             tile_sample_stride_width=32)


def test_tiled_decode_matches_diffusers(tiny):
    ref, folder = tiny
    model = ours(folder)
    z = latents(2, 4, 2, 6, 8, seed=4)  # 48 x 64 pixels: 2 x 2 tiles, the last row and column ragged
    with tiling(ref, model, TILES), torch.no_grad():
        expected = ref.decode(z).sample
        out = model.decode(z)
    assert rel_l2(out, expected) < TOL
    model.disable_tiling()
    assert rel_l2(model.decode(z), expected) > 1e-3  # the tiles really were blended, not decoded whole


def test_tiled_encode_matches_diffusers(tiny):
    ref, folder = tiny
    model = ours(folder)
    x = video(1, 3, 5, 48, 64, seed=5)
    with tiling(ref, model, TILES), torch.no_grad():
        expected = ref.encode(x).latent_dist
        post = model.encode(x)
    assert rel_l2(post.mean, expected.mean) < TOL
    assert rel_l2(post.logvar, expected.logvar) < TOL


@pytest.mark.parametrize("settings", [None, dict(TILES, tile_sample_min_num_frames=12, tile_sample_stride_num_frames=8)])
def test_framewise_decode_matches_diffusers(tiny, settings):
    """> 4 latent frames go through diffusers' default frame-wise decode (16/12 sample frames), or the
    frame tiles set by enable_tiling combined with spatial tiles."""
    ref, folder = tiny
    model = ours(folder)
    z = latents(1, 4, 6, 5, 7, seed=6)
    with tiling(ref, model, settings), torch.no_grad():
        expected = ref.decode(z).sample
        out = model.decode(z)
    assert out.shape == (1, 3, 21, 40, 56)
    assert rel_l2(out, expected) < TOL
    model.use_framewise_decoding = False
    model.disable_tiling()
    assert rel_l2(model.decode(z), expected) > 1e-3  # frame-wise decoding changes the result


@pytest.mark.parametrize("settings", [None, TILES])
def test_framewise_encode_matches_diffusers(tiny, settings):
    ref, folder = tiny
    model = ours(folder)
    x = video(2, 3, 29, 40, 56, seed=7)  # > 16 frames
    with tiling(ref, model, settings), torch.no_grad():
        expected = ref.encode(x).latent_dist
        post = model.encode(x)
    assert post.mean.shape == (2, 4, 8, 5, 7)
    assert rel_l2(post.mean, expected.mean) < TOL
    assert rel_l2(post.logvar, expected.logvar) < TOL


def test_chunked_convolutions_match_diffusers(tiny, monkeypatch):
    """A tiny chunk budget forces the chunked, sliding-window and in-place paths of CausalConv3d."""
    ref, folder = tiny
    model = ours(folder)
    z = latents(1, 4, 3, 5, 7, seed=8)
    x = video(1, 3, 9, 40, 56, seed=8)
    with torch.no_grad():
        expected_video, expected = ref.decode(z).sample, ref.encode(x).latent_dist
    calls = []
    conv_forward = torch.nn.Conv3d.forward
    monkeypatch.setattr(torch.nn.Conv3d, "forward", lambda self, t: calls.append(t.shape[2]) or conv_forward(self, t))
    model.decode(z)
    whole = len(calls)
    calls.clear()
    monkeypatch.setattr(vae_blocks, "CHUNK_ELEMENTS", 2000)
    out, post = model.decode(z), model.encode(x)
    assert max(calls) <= 5 and len(calls) > 3 * whole  # one or two output frames per convolution call
    assert rel_l2(out, expected_video) < TOL
    assert rel_l2(post.mean, expected.mean) < TOL


def test_other_resampling_plan_matches_diffusers(reference_store, tmp_path):
    """Spatial ratio 4: the third level resamples in time only ((2, 1, 1) downsampling, (2, 1) upsampling)."""
    config = dict(VAE_TINY, spatial_compression_ratio=4)
    src = reference_store.get("vae_tiny_s4", lambda p: build_vae(p, seed=3, **config))
    weights_convert.convert(src, tmp_path / "native")
    ref, model = load_reference(src), ours(tmp_path / "native")
    x, z = video(1, 3, 9, 20, 28, seed=11), latents(2, 4, 3, 5, 7, seed=11)
    with torch.no_grad():
        expected, expected_video = ref.encode(x).latent_dist, ref.decode(z).sample
    assert rel_l2(model.encode(x).mean, expected.mean) < TOL
    out = model.decode(z)
    assert out.shape == (2, 3, 9, 20, 28)
    assert rel_l2(out, expected_video) < TOL


def test_real_config_matches_diffusers(scratch):
    """The real widths: (128, 256, 512, 512), 2 layers per block, 16 latent channels, 32 groups."""
    src = scratch / "vae_real"
    src.mkdir()
    build_vae(src, seed=2, **VAE_REAL)
    weights_convert.convert(src, scratch / "native")
    ref = load_reference(src)
    x, z = video(1, 3, 5, 16, 24, seed=9), latents(1, 16, 3, 2, 3, seed=9)
    with torch.no_grad():
        expected, expected_video = ref.encode(x).latent_dist, ref.decode(z).sample
    del ref
    model = ours(scratch / "native")
    post = model.encode(x)
    assert rel_l2(post.mean, expected.mean) < TOL
    assert rel_l2(post.logvar, expected.logvar) < TOL
    assert rel_l2(model.decode(z), expected_video) < TOL


def test_bf16_runs_on_cpu(tiny, monkeypatch):
    """bfloat16 error vs the float32 reference stays within 2x that of diffusers run in bfloat16."""
    ref, folder = tiny
    model = ours(folder, dtype=torch.bfloat16)
    ref_bf16 = copy.deepcopy(ref).to(torch.bfloat16)
    x, z = video(1, 3, 5, 24, 32, seed=10), latents(1, 4, 2, 3, 4, seed=10)
    with torch.no_grad():
        expected, expected_video = ref.encode(x).latent_dist, ref.decode(z).sample
        low = ref_bf16.encode(x.bfloat16()).latent_dist.mean, ref_bf16.decode(z.bfloat16()).sample
    monkeypatch.setattr(vae_blocks, "CHUNK_ELEMENTS", 2000)  # chunked GroupNorm statistics in bf16 too
    post, out = model.encode(x), model.decode(z)
    assert post.mean.dtype == out.dtype == torch.bfloat16
    assert rel_l2(post.mean, expected.mean) < 2 * rel_l2(low[0], expected.mean) + 1e-3
    assert rel_l2(out, expected_video) < 2 * rel_l2(low[1], expected_video) + 1e-3
    assert post.sample(generator=torch.Generator().manual_seed(0)).dtype == torch.bfloat16
