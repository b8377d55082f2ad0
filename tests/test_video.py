"""framepack_native.video: mp4 written atomically, decodable, with the right frame count and content."""
import pytest
import torch

from framepack_native.video import read_video, to_uint8_frames, write_mp4


def test_uint8_conversion_rounds_and_clamps():
    frames = torch.tensor([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 1.0, 2.0]).view(1, 3, 1, 2)
    px = to_uint8_frames(frames)
    assert px.shape == (1, 1, 2, 3)
    # (F, 3, H, W) -> (F, H, W, 3), RGB order kept: R = (-0.5, 0), G = (0.5, 1.5) / 255 (half to even), B = (1, 2)
    assert px.tolist() == [[[[0, 0, 255], [0, 2, 255]]]]


def test_mp4_round_trip(tmp_path):
    # smooth frames so that lossy H.264 stays close: a moving gradient
    x = torch.linspace(0, 1, 48).view(1, 1, 1, 48)
    frames = torch.stack([(x + 0.02 * i + torch.zeros(3, 32, 48)).remainder(1.0).squeeze(0) for i in range(9)])
    frames[:, 1] *= 0.5
    frames[:, 2] = 1 - frames[:, 2]  # three different channels: swapped R and B would not go unseen
    out = write_mp4(tmp_path / "v.mp4", frames, fps=30, crf=10)
    decoded = read_video(out)
    assert decoded.shape == (9, 32, 48, 3)
    err = (torch.from_numpy(decoded).float() / 255 - frames.permute(0, 2, 3, 1)).abs().mean().item()
    assert err < 0.03, err
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_bad_output_leaves_nothing(tmp_path):
    frames = torch.rand(2, 3, 16, 16)
    with pytest.raises(OSError, match="no such folder"):
        write_mp4(tmp_path / "missing" / "v.mp4", frames)
    with pytest.raises(ValueError, match="even sizes"):
        write_mp4(tmp_path / "v.mp4", torch.rand(2, 3, 15, 16))
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\)"):
        write_mp4(tmp_path / "v.mp4", torch.rand(2, 4, 16, 16))
    assert list(tmp_path.iterdir()) == []


def test_output_gets_normal_permissions(tmp_path):
    import os
    umask = os.umask(0o022)
    try:
        out = write_mp4(tmp_path / "v.mp4", torch.rand(2, 3, 16, 16))
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("crf", [-50, 52, 16.0, True, "16"])
def test_crf_checked_before_encoding(tmp_path, crf):
    with pytest.raises(ValueError, match=r"crf must be an integer in 0..51 \(libx264\)"):
        write_mp4(tmp_path / "v.mp4", torch.rand(2, 3, 16, 16), crf=crf)
    assert list(tmp_path.iterdir()) == []
