"""Video extension in latent space (issue 17; framepack_native/extension.py): the input frames come back unchanged up to
the one blended overlap, the first new section's history is the VAE encoding of the input's last frames, and a saved
vanilla run resumed with a longer length equals one uninterrupted run of that length."""
import pytest
import torch

from framepack_native.demo import demo_image, demo_pipeline
from framepack_native.extension import DEFAULT_CONTEXT_LATENTS, read_source
from framepack_native.presets import second_generator
from framepack_native.sections import HISTORY_SIZES
from framepack_native.video import write_mp4

W = 2
KW = dict(height=32, width=48, latent_window_size=W, num_inference_steps=1, sampling_type="vanilla")


@pytest.fixture(scope="module")
def pipe():
    return demo_pipeline(seed=1)


def gen():
    return torch.Generator().manual_seed(3)


@pytest.fixture(scope="module")
def base(pipe):
    """A 2-section vanilla video, (17, 3, 32, 48) uint8."""
    return pipe(demo_image(), "waves", num_frames=9, generator=gen(), output_type="uint8", **KW)[0]


def spy_transformer(pipe, monkeypatch):
    calls = []
    forward = pipe.transformer.forward

    def spy(*args, **kw):
        calls.append(kw)
        return forward(*args, **kw)
    monkeypatch.setattr(pipe.transformer, "forward", spy)
    return calls


@pytest.mark.parametrize("context", [DEFAULT_CONTEXT_LATENTS, 3, 1])
def test_input_frames_come_back_unchanged(pipe, base, context):
    """Output = the input's frames bit for bit except the last 4 (min(c, W) - 1) + 1, which the first new section
    cross-fades, then 4 W new frames per section."""
    out = pipe(None, "waves", video=base, num_frames=9, context_latents=context, generator=gen(),
               output_type="uint8", **KW)[0]
    c = min(context, (base.shape[0] - 1) // 4 + 1)
    overlap = 4 * (min(c, W) - 1) + 1
    assert out.shape[0] == base.shape[0] + 2 * 4 * W
    assert torch.equal(out[:base.shape[0] - overlap], base[:base.shape[0] - overlap])
    assert not torch.equal(out[base.shape[0]:], base[-2 * 4 * W:])  # new frames, not a copy


def test_float_input_and_float_output(pipe, base):
    frames = base.float() / 255
    out = pipe(None, "waves", video=frames, num_frames=5, generator=gen(), **KW)[0]
    n = base.shape[0] - (4 * (W - 1) + 1)
    assert torch.equal(out[:n], frames[:n]) and out.shape[0] == base.shape[0] + 4 * W


def test_history_is_the_encoded_context(pipe, base, monkeypatch):
    """The first new section's 1x / 2x / 4x history = the newest 19 latents of [zeros (19), context latents], the
    context latents being the VAE posterior mean of the input's last 4 (c - 1) + 1 frames, scaled; its clean start
    latent is the start image's (here the video's first frame)."""
    calls = spy_transformer(pipe, monkeypatch)
    c = 3
    pipe(None, "waves", video=base, num_frames=5, context_latents=c, generator=gen(), **KW)
    frames = base[-(4 * (c - 1) + 1):].float() / 255  # (9, 3, H, W)
    pixels = (frames * 2 - 1).permute(1, 0, 2, 3)[None]
    expected = pipe.vae.encode(pixels).mean * pipe.vae.config.scaling_factor  # (1, C, c, h, w)
    assert expected.shape[2] == c
    history = torch.cat((torch.zeros(1, 16, sum(HISTORY_SIZES), 4, 6), expected), dim=2)[:, :, -19:]
    h4, h2, h1 = history.split(HISTORY_SIZES[::-1], dim=2)
    first = calls[0]
    torch.testing.assert_close(first["latents_history_4x"], h4, rtol=0, atol=0)
    torch.testing.assert_close(first["latents_history_2x"], h2, rtol=0, atol=0)
    torch.testing.assert_close(first["latents_clean"][:, :, 1:], h1, rtol=0, atol=0)
    # the start latent: the first frame encoded as any run's start image (official preset: posterior generator
    # seeded initial_seed + 1)
    start = pipe._encode_image(base[0], 1, 32, 48, second_generator(gen()), torch.float32, "crop")[1]
    assert torch.equal(first["latents_clean"][:, :, :1], start)


def test_extending_a_saved_run_equals_one_run(pipe, tmp_path):
    """A vanilla run of N sections saved to state_dir, resumed with the length of N + M sections: the same frames as
    one run of N + M sections (and its latents)."""
    one = pipe(demo_image(), "waves", num_frames=3 * 5, generator=gen(), **KW)
    first = pipe(demo_image(), "waves", num_frames=5, generator=gen(), state_dir=tmp_path / "s", **KW)
    assert first.shape[1] == 4 * W + 1 and one.shape[1] == 3 * 4 * W + 1
    extended = pipe(demo_image(), "waves", num_frames=3 * 5, generator=gen(), state_dir=tmp_path / "s", resume=True,
                    **KW)
    assert torch.equal(extended, one)
    with pytest.raises(ValueError, match="3 finished sections, more than the 1 of this length"):  # shorter: refused
        pipe(demo_image(), "waves", num_frames=5, generator=gen(), state_dir=tmp_path / "s", resume=True, **KW)


def test_resuming_an_extension(pipe, base, tmp_path):
    """An extension stopped after its first section and resumed gives the uninterrupted extension (the input's
    frames, which the state does not hold, come back too)."""
    whole = pipe(None, "waves", video=base, num_frames=10, generator=gen(), **KW)

    class Stop(Exception):
        pass

    def stop(event):
        if event["kind"] == "section":
            raise Stop
    with pytest.raises(Stop):
        pipe(None, "waves", video=base, num_frames=10, generator=gen(), state_dir=tmp_path / "e", callback=stop, **KW)
    resumed = pipe(None, "waves", video=base, num_frames=10, generator=gen(), state_dir=tmp_path / "e", resume=True,
                   **KW)
    assert torch.equal(resumed, whole)


def test_section_times_count_from_the_input(pipe, base):
    events = []
    pipe(None, "waves", video=base, num_frames=10, generator=gen(), callback=events.append, **KW)
    spans = [(e["start_s"], e["end_s"]) for e in events if e["kind"] == "section"]
    F = base.shape[0]
    assert spans == [((F + 8 * p) / 30, (F + 8 * (p + 1)) / 30) for p in range(2)]


def test_extend_from_a_file(pipe, base, tmp_path):
    """A video file is read with PyAV; its decoded frames are the input (what comes back unchanged)."""
    path = write_mp4(tmp_path / "in.mp4", base)
    from framepack_native.video import read_video
    decoded = torch.from_numpy(read_video(path)).permute(0, 3, 1, 2)
    out = pipe(None, "waves", video=path, num_frames=5, generator=gen(), output_type="uint8", **KW)[0]
    n = decoded.shape[0] - (4 * (W - 1) + 1)
    assert torch.equal(out[:n], decoded[:n])


def test_bad_videos(tmp_path):
    frames = torch.zeros(9, 3, 32, 48, dtype=torch.uint8)
    with pytest.raises(ValueError, match="needs vanilla sampling"):
        read_source(frames, "inverted_anti_drifting", 19)
    for bad in (0, 20, 2.0, True):
        with pytest.raises(ValueError, match="context_latents must be an int in 1..19"):
            read_source(frames, "vanilla", bad)
    with pytest.raises(ValueError, match="no such video file"):
        read_source(tmp_path / "missing.mp4", "vanilla", 19)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mp4: cannot read the video"):
        read_source(tmp_path / "empty.mp4", "vanilla", 19)
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 50)
    with pytest.raises(ValueError, match="junk.mp4: cannot read the video"):
        read_source(tmp_path / "junk.mp4", "vanilla", 19)
    with pytest.raises(ValueError, match="multiples of 16"):
        read_source(torch.zeros(9, 3, 30, 48, dtype=torch.uint8), "vanilla", 19)
    with pytest.raises(ValueError, match=r"must be \(F, 3, H, W\)"):
        read_source(torch.zeros(0, 3, 32, 48), "vanilla", 19)
    with pytest.raises(ValueError, match=r"finite and in \[0, 1\]"):
        read_source(torch.full((9, 3, 32, 48), 2.0), "vanilla", 19)
    source = read_source(frames, "vanilla", 19)
    assert source.context == 3  # 9 frames hold 3 latents
    with pytest.raises(ValueError, match="the video to extend is 32 x 48"):
        source.check_size(64, 48)


def test_bad_extension_arguments(pipe, base):
    with pytest.raises(ValueError, match="needs vanilla sampling"):
        pipe(None, "waves", video=base, num_frames=5, **{**KW, "sampling_type": "inverted_anti_drifting"})
    with pytest.raises(ValueError, match="the new frames must be the same size"):
        pipe(None, "waves", video=base, num_frames=5, **{**KW, "height": 64})
    with pytest.raises(ValueError, match="falls in the video being extended"):
        pipe(None, "waves", video=base, num_frames=5, keyframes={0.1: demo_image()}, **KW)


def test_extension_with_a_short_context_extended_again(pipe, tmp_path):
    """An extension whose first join blends fewer frames than a later one (context 1 < window 3) saved after its only
    section and resumed with a longer length: the usual edge was kept, and the frames equal one longer run."""
    video = torch.rand(5, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    kw = {**KW, "latent_window_size": 3}
    whole = pipe(None, "waves", video=video, num_frames=18, context_latents=1, generator=gen(), **kw)
    pipe(None, "waves", video=video, num_frames=9, context_latents=1, generator=gen(), state_dir=tmp_path / "s", **kw)
    again = pipe(None, "waves", video=video, num_frames=18, context_latents=1, generator=gen(),
                 state_dir=tmp_path / "s", resume=True, **kw)
    assert torch.equal(again, whole) and whole.shape[1] == 5 + 2 * 12
