"""End to end: a random-weight diffusers HunyuanVideoFramepackPipeline vs FramePackPipeline on its conversion.

Same generator seed, preset="diffusers" (sampler euler, stretched image, the scheduler's sigmas): frames (B, F, 3, H, W) in [0, 1] within 5e-3 (max abs) of diffusers'
output_type="pt". The reference runs once per case; both sides in float32 on the CPU.
"""
import numpy as np
import PIL.Image
import pytest
import torch

from framepack_native import FramePackPipeline
from tests.reference.pipeline import build_pipeline, load_pipeline
from weights_convert import convert

H, W = 32, 48


@pytest.fixture(scope="module")
def converted(reference_store, tmp_path_factory):
    src = reference_store.get("pipeline_tiny", lambda p: build_pipeline(p, layout="pipeline"))
    dst = convert(src, tmp_path_factory.mktemp("native") / "framepack")  # lossless: the source is float32
    return src, dst


@pytest.fixture(scope="module")
def pipes(converted):
    src, dst = converted
    return load_pipeline(src), FramePackPipeline.from_pretrained(dst, dtype=torch.float32, device="cpu")


def picture(seed, h=41, w=57):
    """An odd-sized smooth RGB picture (so that resizing matters)."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([np.sin(x / (5 + c) + rng.rand() * 6) * np.cos(y / (7 + c)) for c in range(3)], -1)
    return PIL.Image.fromarray(((img * 0.5 + 0.5) * 255).astype(np.uint8))


CASES = {
    # 25 frames with a 2-latent window (5 frames) -> 5 sections: the long padding schedule [3, 2, 2, 1, 0]
    "inverted_5_sections": dict(sampling_type="inverted_anti_drifting", num_frames=25, latent_window_size=2),
    "vanilla": dict(sampling_type="vanilla", num_frames=17, latent_window_size=3),
    # diffusers 0.42 averages the two SigLIP embeddings but conditions on the first image's only
    "first_last_image_as_diffusers": dict(sampling_type="inverted_anti_drifting", num_frames=17, latent_window_size=3,
                                          last_image=True, average_last_image_embeds=False),
    # the averaged conditioning (FramePack PR #167): diffusers' encode_image patched to return the mean
    "first_last_image_averaged": dict(sampling_type="inverted_anti_drifting", num_frames=17, latent_window_size=3,
                                      last_image=True, average_last_image_embeds=True),
    "batch_of_2_prompts": dict(sampling_type="inverted_anti_drifting", num_frames=9, latent_window_size=3, batch=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pipeline_matches_diffusers(pipes, case):
    ref_pipe, ours = pipes
    kw = dict(CASES[case])
    batch = kw.pop("batch", 1)
    last = picture(7, 39, 50) if kw.pop("last_image", False) else None
    average = kw.pop("average_last_image_embeds", True)
    prompts = ["a red fox runs through snow", "a sailboat at dusk, wide shot, 35mm"][:batch]
    common = dict(height=H, width=W, num_inference_steps=3, guidance_scale=6.0, **kw)
    image = picture(1)
    if last is not None and average:
        encode = ref_pipe.encode_image
        last_embeds = encode(ref_pipe.video_processor.preprocess(last, H, W))
        calls = []

        def averaged(img, **kwargs):
            calls.append(1)
            out = encode(img, **kwargs)
            return (out + last_embeds.to(out)) / 2 if len(calls) == 1 else out

        ref_pipe.encode_image = averaged
    ref = ref_pipe(image=[image] * batch if batch > 1 else image, last_image=last,
                   prompt=prompts if batch > 1 else prompts[0], generator=torch.Generator().manual_seed(42),
                   output_type="pt", **common).frames
    ref_pipe.__dict__.pop("encode_image", None)
    steps = []
    got = ours(image, prompts if batch > 1 else prompts[0], preset="diffusers", last_image=last,
               average_last_image_embeds=average,
               generator=torch.Generator().manual_seed(42), callback=steps.append, **common)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.min() >= 0 and got.max() <= 1
    unsaturated = ((ref > 1e-3) & (ref < 1 - 1e-3)).float().mean().item()
    assert unsaturated > 0.5, f"reference frames saturate ({unsaturated:.2f} unsaturated): the test would be blind"
    err = (got - ref).abs().max().item()
    assert err < 5e-3, f"max abs error {err:.2e}"
    kinds = [e["kind"] for e in steps]
    sections = kinds.count("section")
    assert sections >= 1 and kinds.count("step") == 3 * sections
    # every event knows the totals (the CLI's progress bar): `sections` section events of `steps` step events each
    assert {(e["sections"], e["steps"]) for e in steps if e["kind"] == "step"} == {(sections, 3)}
    assert [(e["section"], e["step"]) for e in steps if e["kind"] == "step"] == [
        (k, i) for k in range(sections) for i in range(3)]


def test_generator_draws_matter(pipes):
    """Another seed gives another video: the comparison above is not blind to the noise."""
    _, ours = pipes
    kw = dict(height=H, width=W, num_frames=5, latent_window_size=2, num_inference_steps=2, preset="diffusers")
    a = ours(picture(1), "x", generator=torch.Generator().manual_seed(0), **kw)
    b = ours(picture(1), "x", generator=torch.Generator().manual_seed(1), **kw)
    assert (a - b).abs().max() > 1e-2


@pytest.mark.parametrize("kwargs, message", [
    (dict(height=40), "multiples of 16"),
    (dict(sampling_type="sideways"), "unknown sampling type 'sideways'"),
    (dict(sampler="ddim"), "unknown sampler 'ddim'"),
    (dict(sampling_type="vanilla", last_image="LAST"), "last_image needs sampling_type"),
    (dict(num_frames=0), "num_frames must be >= 1"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number, got nan"),
    (dict(true_cfg_scale=float("inf")), "true_cfg_scale must be a finite number, got inf"),
    (dict(teacache=True), "teacache must be a threshold >= 0"),
])
def test_bad_arguments(pipes, kwargs, message):
    _, ours = pipes
    if kwargs.get("last_image") == "LAST":
        kwargs["last_image"] = picture(2)
    with pytest.raises(ValueError, match=message):
        ours(picture(1), "x", **{"height": H, "width": W, "num_frames": 5, **kwargs})


def test_teacache_keeps_one_cache_per_guidance_branch(pipes, teacaches):
    """With CFG each section gets a cache for the prompt and one for the negative prompt, each skipping alone."""
    _, ours = pipes
    ours(picture(1), "x", negative_prompt="y", true_cfg_scale=3.0, teacache=10.0, height=H, width=W, num_frames=9,
         latent_window_size=2, num_inference_steps=4, sampler="unipc", generator=torch.Generator().manual_seed(0))
    assert len(teacaches) >= 4 and len(teacaches) % 2 == 0  # 2 per section, at least 2 sections
    assert all(c.previous is not None and c.skipped == 2 for c in teacaches)  # 4 steps: 2 skipped in each
