"""End to end: the official FramePack app's own loop (demo_gradio.py worker(), tests/reference/official_app.py)
vs FramePackPipeline(preset="official") on the conversion of the same random-weight pipeline.

Same seed; frames (1, F, 3, H, W) in [0, 1] within 5e-3 (max abs) of the app's (history_pixels + 1) / 2, clamped.
Both sides in float32 on the CPU. Every case has 5 sections: the app's padding schedule past 4 sections.
"""
import numpy as np
import pytest
import torch

from framepack_native import FramePackPipeline
from tests.reference.official_app import build_official_pipeline, load_official_models, run_official_worker
from tests.test_pipeline import picture
from weights_convert import convert

PROMPT, SEED, STEPS, GS = "a red fox runs through snow", 31337, 2, 10.0
IMAGE = np.array(picture(1, 300, 500))  # (H, W, 3) uint8, as gradio gives it: 300 x 500, not a bucket's shape

CASES = {
    # the app picks the 640 bucket nearest 300 x 500 (480 x 832); ours from resolution=640; window 1: 5 sections
    "bucket_640": dict(seconds=0.67, window=1, cfg=1.0, shape=(480, 832)),
    # an explicit non-bucket size (the app has no such option: the harness's size= replaces its bucket); window 2:
    # the soft append blends 5 overlapping frames (window 1 overlaps 1 frame, taken whole from the history)
    "explicit_320x240": dict(seconds=1.35, window=2, cfg=1.0, size=(320, 240), shape=(320, 240)),
    # CFG: the app encodes its (empty) n_prompt; ours gets no negative_prompt (the official default under CFG: "")
    "cfg_empty_negative": dict(seconds=0.67, window=1, cfg=3.0, size=(320, 240), shape=(320, 240)),
}


@pytest.fixture(scope="module")
def converted(reference_store, tmp_path_factory):
    src = reference_store.get("pipeline_tiny_16ch", build_official_pipeline)
    dst = convert(src, tmp_path_factory.mktemp("native") / "framepack")  # lossless: the source is float32
    return src, dst


@pytest.fixture(scope="module")
def pipes(converted):
    src, dst = converted
    return load_official_models(src), FramePackPipeline.from_pretrained(dst, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_official_app(pipes, case):
    models, ours = pipes
    c = CASES[case]
    sections = max(round(c["seconds"] * 30 / (4 * c["window"])), 1)
    assert sections >= 5, "the case must reach the app's padding schedule for > 4 sections"
    ref = run_official_worker(models, IMAGE, PROMPT, "", SEED, c["seconds"], c["window"], STEPS, c["cfg"], GS, 0.0,
                              size=c.get("size"))
    ref = ((ref + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)  # (1, F, 3, H, W)
    size = dict(zip(("height", "width"), c["size"])) if "size" in c else {}
    got = ours(IMAGE, PROMPT, preset="official", seconds=c["seconds"], latent_window_size=c["window"],
               num_inference_steps=STEPS, true_cfg_scale=c["cfg"], guidance_scale=GS, guidance_rescale=0.0,
               generator=torch.Generator().manual_seed(SEED), **size)
    # the app's frame count: total_generated_latent_frames * 4 - 3, with window latents per section + the start's
    frames = (sections * c["window"] + 1) * 4 - 3
    assert ref.shape == (1, frames, 3, *c["shape"]), ref.shape
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.min() >= 0 and got.max() <= 1
    unsaturated = ((ref > 1e-3) & (ref < 1 - 1e-3)).float().mean().item()
    assert unsaturated > 0.5, f"reference frames saturate ({unsaturated:.2f} unsaturated): the test would be blind"
    err = (got - ref).abs().max().item()
    assert err < 5e-3, f"max abs error {err:.2e}"
