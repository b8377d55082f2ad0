"""framepack_native.sections: soft append and history split against diffusers' helpers; the section plan against
a literal copy of the pipeline's section loop, its tiling of the video, and the demo pipeline's frame counts."""
import pytest
import torch
from diffusers import HunyuanVideoFramepackPipeline
from hypothesis import given, settings
from hypothesis import strategies as st

from framepack_native.sections import (HISTORY_SIZES, SAMPLING_TYPES, history_init, num_sections, padding_schedule,
                                       section_frame_indices, section_plan, soft_append, split_history)


@settings(max_examples=40, deadline=None)
@given(f1=st.integers(1, 12), f2=st.integers(1, 12), overlap=st.integers(0, 12), seed=st.integers(0, 99))
def test_soft_append_matches_diffusers(f1, f2, overlap, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, 3, f1, 4, 5, generator=g), torch.randn(2, 3, f2, 4, 5, generator=g)
    if overlap > min(f1, f2):
        with pytest.raises(ValueError, match="cannot overlap"):
            soft_append(a, b, overlap)
        return
    ref = HunyuanVideoFramepackPipeline._soft_append(None, a, b, overlap)
    out = soft_append(a, b, overlap)
    assert out.shape == (2, 3, f1 + f2 - overlap, 4, 5)
    assert torch.equal(out, ref)


def test_split_history_takes_the_newest_side():
    frames = torch.arange(40.0).view(1, 1, 40, 1, 1)
    h1, h2, h4 = split_history(frames, "inverted_anti_drifting")  # the newest frames lead the buffer
    assert [t.flatten().tolist() for t in (h1, h2)] == [[0.0], [1.0, 2.0]] and h4.flatten()[0] == 3
    h1, h2, h4 = split_history(frames, "vanilla")  # the newest frames end the buffer
    assert [t.flatten().tolist() for t in (h1, h2)] == [[39.0], [37.0, 38.0]] and h4.shape[2] == HISTORY_SIZES[2]


@pytest.mark.parametrize("frames, window, expected", [(1, 9, 1), (33, 9, 1), (34, 9, 2), (129, 9, 4), (150, 9, 5),
                                                      (25, 2, 5)])
def test_num_sections(frames, window, expected):
    assert num_sections(frames, window) == expected


# ---- the section plan against today's pipeline loop -------------------------------------------------------------

MODES = [("inverted_anti_drifting", False), ("inverted_anti_drifting", True), ("vanilla", False)]


def fake_decode(z):
    """A causal-VAE stand-in: latent 0 -> 1 frame, each later latent -> 4 frames. (B, C, T, ...) -> (B, C, 4T-3, ...)"""
    return torch.cat((z[:, :, :1], z[:, :, 1:].repeat_interleave(4, dim=2)), dim=2)


def todays_loop(sampling_type, sections, window, start, last, section_latents):
    """A literal copy of the bookkeeping of FramePackPipeline.__call__'s section loop (before the plan), one record a
    section; section_latents[k]: the latents the sampler returns in section k."""
    history = torch.zeros(*start.shape[:2], sum(HISTORY_SIZES), *start.shape[3:])
    generated = 0
    if sampling_type == "vanilla":
        history, generated = torch.cat((history, start), dim=2), 1
    paddings = padding_schedule(sections)
    overlap = (window - 1) * 4 + 1
    video, records = None, []
    for k in range(sections):
        last_section = k == sections - 1
        padding = paddings[k] * window if sampling_type == "inverted_anti_drifting" else 0
        indices = section_frame_indices(sampling_type, window, padding)
        h1, h2, h4 = split_history(history, sampling_type)
        if last is not None and k == 0:
            h1 = last
        latents = section_latents[k]
        if sampling_type == "inverted_anti_drifting":
            if last_section:
                latents = torch.cat((start, latents), dim=2)
            generated += latents.shape[2]
            history = torch.cat((latents, history), dim=2)
            real = history[:, :, :generated]
            part = real[:, :, :window * 2 + (1 if last_section else 0)]
        else:
            generated += latents.shape[2]
            history = torch.cat((history, latents), dim=2)
            real = history[:, :, -generated:]
            part = real[:, :, -window * 2:]
        if video is None:
            video = fake_decode(real)
            decoded = real
        else:
            current = fake_decode(part)
            video = (soft_append(current, video, overlap) if sampling_type == "inverted_anti_drifting"
                     else soft_append(video, current, overlap))
            decoded = part
        records.append(dict(padding=padding, indices=indices, read=(h1, h2, h4), history=history,
                            generated=generated, decoded=decoded, video=video))
    return records


def planned_loop(plan, start, last, section_latents):
    """The same loop driven by the plan's helpers, with no branch on the sampling type."""
    history, generated = history_init(start, plan[0].sampling_type)
    video, records = None, []
    for s in plan:
        read = s.read_history(history, last)
        history, generated = s.join_latents(history, generated, section_latents[s.index], start)
        decoded = s.latents_to_decode(history, generated)
        video = s.join_pixels(video, fake_decode(decoded))
        records.append(dict(padding=s.padding, indices=(s.indices_latents, s.indices_clean, s.indices_2x,
                                                        s.indices_4x), read=read, history=history,
                            generated=generated, decoded=decoded, video=video))
    return records


@settings(max_examples=150, deadline=None)
@given(mode=st.sampled_from(MODES), sections=st.integers(1, 12), window=st.integers(1, 12),
       shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
       seed=st.integers(0, 2**16))
def test_plan_reproduces_todays_loop(mode, sections, window, shape, seed):
    sampling_type, with_last = mode
    B, C, H, W = shape
    g = torch.Generator().manual_seed(seed)
    start, last = torch.randn(B, C, 1, H, W, generator=g), torch.randn(B, C, 1, H, W, generator=g)
    section_latents = [torch.randn(B, C, window, H, W, generator=g) for _ in range(sections)]
    last = last if with_last else None
    plan = section_plan(sampling_type, sections, window, last_image=with_last)
    assert [s.index for s in plan] == list(range(sections))
    assert {s.join for s in plan} == {"front" if sampling_type == "inverted_anti_drifting" else "back"}
    expected = todays_loop(sampling_type, sections, window, start, last, section_latents)
    got = planned_loop(plan, start, last, section_latents)
    for k, (e, o) in enumerate(zip(expected, got, strict=True)):
        assert o["padding"] == e["padding"] and o["generated"] == e["generated"], k
        for name in ("indices", "read"):
            pairs = zip(o[name], e[name], strict=True)
            assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in pairs), (k, name)
        for name in ("history", "decoded", "video"):
            assert o[name].dtype == e[name].dtype and torch.equal(o[name], e[name]), (k, name)
        assert plan[k].decode_latents == (None if k == 0 else e["decoded"].shape[2]), k


@pytest.mark.parametrize("sampling_type, with_last", MODES)
def test_every_schedule_lands_each_latent_in_its_frames(sampling_type, with_last):
    """Symbolic latents, value = 1 + the latent's index in the final video (the start latent 1, the empty history 0):
    every count 1..12 and window 1..12 gives 4 S W + 1 frames, frame f showing latent ceil(f / 4), and each section's
    [start_frame, end_frame] shows exactly its own latents (position 0: and the start latent)."""
    for sections in range(1, 13):
        for window in range(1, 13):
            plan = section_plan(sampling_type, sections, window, last_image=with_last)
            start, last = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64), torch.full((1, 1, 1, 1, 1), -1.0)
            ids = torch.arange(window, dtype=torch.float64).view(1, 1, -1, 1, 1)  # (1, 1, W, 1, 1)
            section_latents = [2.0 + s.position * window + ids for s in plan]
            video = planned_loop(plan, start, last, section_latents)[-1]["video"].flatten()
            frames = 4 * sections * window + 1
            assert video.shape == (frames,), (sections, window)
            torch.testing.assert_close(video, 1.0 + (torch.arange(frames) + 3).div(4, rounding_mode="floor")
                                       .double(), rtol=0, atol=1e-9)
            for s in plan:
                shown = video[s.start_frame:s.end_frame + 1].round().unique().tolist()
                own = list(range(2 + s.position * window, 2 + (s.position + 1) * window))
                assert shown == ([1.0] if s.position == 0 else []) + own, (sections, window, s.index)


@settings(max_examples=100, deadline=None)
@given(mode=st.sampled_from(MODES), sections=st.integers(1, 12), window=st.integers(1, 12),
       fps=st.sampled_from([1, 24, 30, 29.97, 60]), ratio=st.integers(1, 4))
def test_sections_tile_the_video(mode, sections, window, fps, ratio):
    sampling_type, with_last = mode
    plan = section_plan(sampling_type, sections, window, last_image=with_last, fps=fps, temporal_ratio=ratio)
    order = [s.position for s in plan]
    assert sorted(order) == list(range(sections))
    if sampling_type == "inverted_anti_drifting":
        assert order == list(range(sections - 1, -1, -1))
    else:
        assert order == list(range(sections))
    by_position = sorted(plan, key=lambda s: s.position)
    assert by_position[0].start_frame == 0 and by_position[0].start_s == 0
    assert by_position[-1].end_frame == ratio * sections * window
    assert by_position[-1].end_s == (ratio * sections * window + 1) / fps
    for a, b in zip(by_position, by_position[1:]):
        assert b.start_frame == a.end_frame + 1 and b.start_s == a.end_s
    for s in plan:
        assert s.end_frame - s.start_frame + 1 == ratio * window + (s.position == 0)
        assert s.start_s == s.start_frame / fps and s.end_s == (s.end_frame + 1) / fps
        assert s.overlap == (window - 1) * ratio + 1


@pytest.mark.parametrize("sections", [1, 2, 5])
def test_last_image_rule(sections):
    plan = section_plan("inverted_anti_drifting", sections, 3, last_image=True)
    assert [s.uses_last_image for s in plan] == [True] + [False] * (sections - 1)
    assert not any(s.uses_last_image for s in section_plan("inverted_anti_drifting", sections, 3))
    assert not any(s.uses_last_image for s in section_plan("vanilla", sections, 3))
    assert [s.adds_start_latent for s in plan] == [False] * (sections - 1) + [True]
    history, _ = history_init(torch.ones(1, 2, 1, 3, 3), "inverted_anti_drifting")
    last = torch.full((1, 2, 1, 3, 3), 7.0)
    h1, h2, h4 = plan[0].read_history(history, last)
    assert torch.equal(h1, last) and h2.shape[2] == 2 and h4.shape[2] == 16
    with pytest.raises(ValueError, match="last image"):
        plan[0].read_history(history)
    if sections > 1:
        assert torch.equal(plan[1].read_history(history, last)[0], history[:, :, :1])
    with pytest.raises(ValueError, match="last_image needs"):
        section_plan("vanilla", sections, 3, last_image=True)


def test_history_init():
    start = torch.randn(2, 3, 1, 4, 5)
    history, generated = history_init(start, "vanilla")
    assert history.shape == (2, 3, 20, 4, 5) and generated == 1 and torch.equal(history[:, :, -1:], start)
    assert not history[:, :, :-1].any()
    history, generated = history_init(start, "inverted_anti_drifting")
    assert history.shape == (2, 3, 19, 4, 5) and generated == 0 and not history.any()


@pytest.mark.parametrize("args, kwargs, match", [
    (("spiral", 2, 9), {}, "unknown sampling type"), (("vanilla", 0, 9), {}, "sections must be >= 1, got 0"),
    (("inverted_anti_drifting", 0, 9), {}, "sections must be >= 1, got 0"),
    (("vanilla", 2, 0), {}, "latent_window_size must be >= 1, got 0"), (("vanilla", 2, 9), {"fps": 0}, "fps"),
    (("vanilla", 2, 9), {"temporal_ratio": 0}, "temporal_ratio")])
def test_section_plan_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        section_plan(*args, **kwargs)
    with pytest.raises(ValueError, match="unknown sampling type"):
        history_init(torch.zeros(1, 1, 1, 1, 1), "spiral")


@pytest.fixture(scope="module")
def demo():
    from framepack_native.demo import demo_image, demo_pipeline
    return demo_pipeline(), demo_image()


@pytest.mark.parametrize("sampling_type", SAMPLING_TYPES)
def test_demo_pipeline_makes_the_planned_frames(demo, sampling_type):
    pipe, image = demo
    window, num_frames = 2, 6
    plan = section_plan(sampling_type, num_sections(num_frames, window), window)
    out = pipe(image, "x", height=64, width=96, num_frames=num_frames, latent_window_size=window,
               num_inference_steps=1, preset="diffusers", sampling_type=sampling_type,
               generator=torch.Generator().manual_seed(0))
    assert len(plan) == 2 and out.shape[1] == max(s.end_frame for s in plan) + 1 == 4 * 2 * window + 1
