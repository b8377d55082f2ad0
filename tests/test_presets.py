"""The presets' own rules (framepack_native.presets), each checked against what defines it.

The official preset against the official app's whole worker loop: tests/test_official_app.py; the diffusers preset
against diffusers' pipeline: tests/test_pipeline.py. Here: the section count, the dtype tables, the defaults a
preset fills in (negative prompt, seed, sampler) and that explicit arguments override them.
"""
import pytest
import torch

from framepack_native.demo import demo_image
from framepack_native.presets import COMPONENTS, PRESETS, get_preset, resolve_dtypes, section_count


def test_section_count_is_the_apps_formula():
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.floats(1 / 30, 120), st.integers(1, 33))
    def check(seconds, window):
        exact = seconds * 30 / (4 * window)
        n = section_count(seconds, window)
        assert n >= 1 and (n == 1 or abs(n - exact) <= 0.5)  # the nearest integer, at least one
        frames = section_count(seconds, window, "frames")
        assert (frames - 1) * (4 * window - 3) < round(seconds * 30) <= frames * (4 * window - 3)  # covers them

    check()
    # 5 s at window 9: 150 / 36 = 4.17 -> 4 sections -> 4 * 4 * 9 + 1 = 145 frames (not 181 as 5 sections give)
    assert section_count(5, 9) == 4 and section_count(5, 9, "frames") == 5
    assert section_count(1.2, 2) == 4 and section_count(1.0, 2) == 4  # 4.5 rounds half to even, as Python's round


def test_dtype_tables():
    official, diffusers = PRESETS["official"], PRESETS["diffusers"]
    table, fp32_head = resolve_dtypes(None, "cuda", official)
    assert table == {"transformer": torch.bfloat16, "vae": torch.float16, "text_encoder": torch.float16,
                     "text_encoder_2": torch.float16, "image_encoder": torch.float16} and fp32_head
    assert resolve_dtypes(None, "cuda", diffusers) == ({n: torch.bfloat16 for n in COMPONENTS}, False)
    assert resolve_dtypes(None, "cpu", official) == ({n: torch.float32 for n in COMPONENTS}, False)
    assert resolve_dtypes(torch.float32, "cuda", official) == ({n: torch.float32 for n in COMPONENTS}, False)
    table, fp32_head = resolve_dtypes({"vae": torch.float32}, "cuda", official)
    assert table["vae"] == torch.float32 and table["text_encoder"] == torch.float16 and fp32_head
    with pytest.raises(ValueError, match=r"unknown components \['unet'\]"):
        resolve_dtypes({"unet": torch.float16}, "cpu", official)
    with pytest.raises(ValueError, match=r"dtype\['vae'\] must be a floating-point torch.dtype"):
        resolve_dtypes({"vae": torch.int8}, "cpu", official)
    with pytest.raises(ValueError, match="unknown preset 'comfy'"):
        get_preset("comfy")


@pytest.fixture(scope="module")
def converted(reference_store, tmp_path_factory):
    from tests.reference.pipeline import build_pipeline
    from weights_convert import convert
    src = reference_store.get("pipeline_tiny", lambda p: build_pipeline(p, layout="pipeline"))
    return convert(src, tmp_path_factory.mktemp("native") / "framepack")


def test_from_pretrained_per_component_dtypes(converted):
    from framepack_native import FramePackPipeline
    pipe = FramePackPipeline.from_pretrained(converted, device="cpu",
                                             dtype={"transformer": torch.bfloat16, "vae": torch.float16})
    dtypes = {n: {p.dtype for p in getattr(pipe, n).parameters()} for n in COMPONENTS}
    assert dtypes["vae"] == {torch.float16} and dtypes["text_encoder"] == {torch.float32}
    # the official preset's fp32 output head: the final Linear alone in float32, the rest bf16
    assert dtypes["transformer"] == {torch.bfloat16, torch.float32}
    head = pipe.transformer.final_layer.linear
    assert {p.dtype for p in head.parameters()} == {torch.float32}
    assert {p.dtype for n, p in pipe.transformer.named_parameters() if not n.startswith("final_layer.linear")} == {
        torch.bfloat16}
    plain = FramePackPipeline.from_pretrained(converted, device="cpu", dtype=torch.bfloat16, preset="diffusers")
    assert {p.dtype for p in plain.transformer.parameters()} == {torch.bfloat16}


@pytest.fixture(scope="module")
def demo(converted):
    from framepack_native import FramePackPipeline
    return FramePackPipeline.from_pretrained(converted, device="cpu")


def run(pipe, **kw):
    args = dict(height=32, width=48, num_frames=5, latent_window_size=2, num_inference_steps=2)
    return pipe(demo_image(), "a calm sea", **{**args, **kw})


def test_official_cfg_encodes_an_empty_negative(demo, monkeypatch):
    encoded = []
    original = demo._encode_text
    monkeypatch.setattr(demo, "_encode_text", lambda prompts, dtype: encoded.append(prompts) or original(prompts,
                                                                                                          dtype))
    run(demo, true_cfg_scale=3.0)
    assert encoded == [["a calm sea"], [""]]
    encoded.clear()
    run(demo, true_cfg_scale=3.0, preset="diffusers")  # diffusers: no negative prompt, no CFG
    assert encoded == [["a calm sea"]]
    encoded.clear()
    run(demo, true_cfg_scale=0.5)  # the app's rule is cfg != 1, not cfg > 1
    assert encoded == [["a calm sea"], [""]]
    encoded.clear()
    run(demo)
    assert encoded == [["a calm sea"]]


def test_official_defaults_and_overrides(demo):
    seeded = run(demo, generator=torch.Generator().manual_seed(31337))
    assert torch.equal(run(demo), seeded)  # no generator: the app's seed 31337
    assert not torch.equal(run(demo, generator=torch.Generator().manual_seed(1)), seeded)
    # an explicit sampler overrides the preset's unipc
    assert not torch.equal(run(demo, sampler="euler", generator=torch.Generator().manual_seed(31337)), seeded)
    # the bucket: without height / width the demo picture (256 x 384, 2 : 3) goes to 512 x 768
    assert demo_image().size == (384, 256)
    frames = demo(demo_image(), "x", num_frames=1, latent_window_size=1, num_inference_steps=1)
    assert frames.shape == (1, 5, 3, 512, 768)


def test_seconds_give_the_apps_length(demo):
    """official: round(seconds * 30 / (4 * window)) sections -> 4 * sections * window + 1 frames (inverted)."""
    # 1 s at window 3: 30 / 12 = 2.5 -> 2 sections (half to even); diffusers' 30 frames need 4 sections of 9
    frames = run(demo, seconds=1.0, num_frames=None, latent_window_size=3, num_inference_steps=1)
    assert frames.shape[1] == 4 * 2 * 3 + 1
    frames = run(demo, seconds=1.0, num_frames=None, latent_window_size=3, num_inference_steps=1, preset="diffusers")
    assert frames.shape[1] == 4 * 4 * 3 + 1
