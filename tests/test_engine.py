"""The section loop's outputs (issue 14): output types, per-step previews, section events, and frames that leave
the device section by section. Parity of the frames themselves: tests/test_pipeline.py, tests/test_official_app.py."""
import einops
import numpy as np
import PIL.Image
import pytest
import torch

from framepack_native.demo import demo_image, demo_pipeline
from tests.reference.official import official_functions

vae_decode_fake = official_functions("framepack.diffusers_helper.hunyuan", ["vae_decode_fake"])["vae_decode_fake"]
KW = dict(height=32, width=48, num_frames=9, latent_window_size=2, num_inference_steps=2)


@pytest.fixture(scope="module")
def pipe():
    return demo_pipeline(seed=1)


def run(pipe, **kw):
    return pipe(demo_image(), "waves", generator=torch.Generator().manual_seed(3), **{**KW, **kw})


def test_output_types(pipe):
    pt = run(pipe)
    assert pt.dtype == torch.float32 and pt.device.type == "cpu" and pt.shape == (1, 4 * 2 * 2 + 1, 3, 32, 48)
    u8 = run(pipe, output_type="uint8")
    assert u8.dtype == torch.uint8 and u8.shape == pt.shape
    assert (u8.int() - (pt * 255).round().int()).abs().max() <= 1
    assert pt.std() > 0.01  # not a constant video: the comparison sees something
    np_frames = run(pipe, output_type="np")
    assert isinstance(np_frames, np.ndarray) and np.array_equal(np_frames, pt.permute(0, 1, 3, 4, 2).numpy())
    pil = run(pipe, output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == pt.shape[1] and isinstance(pil[0][0], PIL.Image.Image)
    assert np.array_equal(np.asarray(pil[0][4]), u8[0, 4].permute(1, 2, 0).numpy())
    latents = run(pipe, output_type="latent")
    assert latents.shape == (1, 16, 1 + 2 * 2, 4, 6)  # start latent + 2 sections of 2, video order
    with pytest.raises(ValueError, match="unknown output_type 'mp4'"):
        run(pipe, output_type="mp4")


@pytest.mark.parametrize("sampler", ["unipc", "euler"])
def test_previews_are_the_apps_map_of_the_steps_clean_latents(pipe, sampler):
    events = []
    run(pipe, sampler=sampler, callback=events.append)
    steps = [e for e in events if e["kind"] == "step"]
    assert len(steps) == 2 * 2
    for e in steps:
        want = (vae_decode_fake(e["denoised"]) * 255.0).numpy().clip(0, 255).astype(np.uint8)
        want = einops.rearrange(want, "b c t h w -> (b h) (t w) c")
        got = e["preview"].numpy()
        assert got.shape == want.shape == (4, 2 * 6, 3) and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # the clean prediction really is x - sigma * v of that step: the last step's is (nearly) the sampled latents
    assert not torch.equal(steps[0]["denoised"], steps[0]["latents"])


def test_section_events_tile_the_video(pipe):
    events, so_far = [], []

    def record(e):
        events.append(e)
        if e["kind"] == "section":
            so_far.append(e["video"]())  # the frames so far, at that moment

    video = run(pipe, num_frames=13, callback=record)  # 3 sections of 2 latents
    sections = [e for e in events if e["kind"] == "section"]
    assert [e["section"] for e in sections] == [0, 1, 2]
    spans = sorted((e["start_s"], e["end_s"]) for e in sections)
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert spans[-1][1] == pytest.approx(video.shape[1] / 30)
    assert all(e["prompt"] == "waves" for e in sections)
    assert [v.shape[1] for v in so_far] == [e["frames_so_far"] for e in sections] == [5, 13, 25]
    # inverted: the video grows at its front, the last call is the whole result
    assert torch.equal(so_far[-1], video)
    assert torch.equal(so_far[1][:, -5:], so_far[2][:, -5:])


@pytest.mark.parametrize("sampling_type", ["inverted_anti_drifting", "vanilla"])
def test_latents_spilled_to_the_host_change_nothing(pipe, sampling_type, monkeypatch):
    """7 sections of 4 latents: the device buffer is cut to its newest 19 latents again and again (vanilla decodes
    from it with more latents generated than it holds); the video equals a run that keeps the whole buffer."""
    import framepack_native.section_loop as section_loop
    kw = dict(num_frames=7 * 13, latent_window_size=4, num_inference_steps=1, sampling_type=sampling_type)
    spilled = run(pipe, **kw)
    monkeypatch.setattr(section_loop, "device_history_frames", lambda window: 10**6)
    assert torch.equal(run(pipe, **kw), spilled) and spilled.shape[1] == 4 * 7 * 4 + 1
