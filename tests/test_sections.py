"""framepack_native.sections: the soft append and history split against diffusers' pipeline helpers."""
import pytest
import torch
from diffusers import HunyuanVideoFramepackPipeline
from hypothesis import given, settings
from hypothesis import strategies as st

from framepack_native.sections import HISTORY_SIZES, num_sections, soft_append, split_history


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
