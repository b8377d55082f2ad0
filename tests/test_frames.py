"""The host frame store (framepack_native.frames) against Section.join_pixels on whole device videos: the same
frames, bit for bit, in both storages, while the device keeps only the overlap frames the next join blends."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from framepack_native.frames import FrameStore, to_uint8, to_unit
from framepack_native.sections import section_plan


def decoded(section, generated, window, g):
    """Stand-in decoded frames of a section: 1 + 4 (T - 1) frames of T decoded latents, values in [-1, 1]."""
    t = generated if section.decode_latents is None else section.decode_latents
    return torch.rand(2, 3, 1 + 4 * (t - 1), 3, 5, generator=g) * 2 - 1


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["inverted_anti_drifting", "vanilla"]), st.integers(1, 9), st.integers(1, 5),
       st.sampled_from(["float", "uint8"]))
def test_store_equals_joining_whole_videos(sampling_type, sections, window, storage):
    g = torch.Generator().manual_seed(sections * 31 + window)
    store, video = FrameStore(storage), None
    generated = 0 if sampling_type == "inverted_anti_drifting" else 1
    for s in section_plan(sampling_type, sections, window):
        generated += window + s.adds_start_latent
        current = decoded(s, generated, window, g)
        video = s.join_pixels(video, current)
        store.join(s, current)
        assert store.edge.shape[2] <= max(s.overlap, current.shape[2])  # the device part does not grow
        assert store.num_frames == video.shape[2]
    want = to_unit(video)  # (B, F, 3, H, W) float32
    want = to_uint8(want) if storage == "uint8" else want
    got = store.frames()
    assert got.dtype == want.dtype and got.device.type == "cpu"
    assert torch.equal(got, want)
    assert got.shape[1] == 4 * sections * window + 1


def test_store_refuses_unknown_storage_and_empty_reads():
    with pytest.raises(ValueError, match="storage must be one of"):
        FrameStore("fp8")
    with pytest.raises(ValueError, match="no frames yet"):
        FrameStore().frames()
