"""Writing frames to H.264 mp4 through PyAV, atomically, and reading them back."""
from pathlib import Path

import numpy as np
import torch

from framepack_native.files import atomic_path

CRF_RANGE = (0, 51)  # libx264's quality scale for 8-bit video: 0 lossless, 51 worst


def to_uint8_frames(frames):
    """(F, 3, H, W) float in [0, 1] (rounded as diffusers' postprocess does) or uint8 -> (F, H, W, 3) uint8 numpy."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (F, 3, H, W), got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        frames = frames.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (F, H, W, 3)


def check_crf(crf):
    """Raise ValueError unless crf is an integer in CRF_RANGE (libx264 refuses or clamps anything else)."""
    if not (isinstance(crf, int) and not isinstance(crf, bool) and CRF_RANGE[0] <= crf <= CRF_RANGE[1]):
        raise ValueError(f"crf must be an integer in {CRF_RANGE[0]}..{CRF_RANGE[1]} (libx264), got {crf!r}")


def write_mp4(path, frames, fps=30, crf=16):
    """Encode (F, 3, H, W) frames (float in [0, 1] or uint8) as H.264 (yuv420p) mp4 at `path`, through a temporary.

    H and W must be even (yuv420p); crf in CRF_RANGE; the file appears only when the encoder has finished.
    """
    check_crf(crf)
    path = Path(path)
    pixels = to_uint8_frames(frames)
    n, h, w, _ = pixels.shape
    if n < 1:
        raise ValueError("no frames to write")
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {h}x{w}")
    if not path.parent.is_dir():
        raise OSError(f"{path.parent}: no such folder for the output video")
    import av

    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf)}
        for rgb in pixels:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video(path):
    """Decode a video into (F, H, W, 3) uint8 numpy frames."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
