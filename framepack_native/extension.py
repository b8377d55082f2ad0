"""Extending a video forward in latent space (vanilla / F1 sampling), without a decode / re-encode of its frames.

The input video's last 4 (c - 1) + 1 frames (c = context_latents, fewer for a short video) are VAE-encoded once
(posterior mean) into c latents, which take the place of the start latent in the history buffer: the first new
section reads its 1x / 2x / 4x history from them (zeros where fewer than 19), as a vanilla section reads the past.
The start image (clean latent 0 and the SigLIP embedding) is `image`, or the video's first frame.

The output is the input frames unchanged, then the new ones. The first new section decodes the newest
k = min(c, window) context latents with its window and cross-fades the 4 (k - 1) + 1 frames they share with the
input's end (the one overlap; FramePack's usual join); every later section joins as in any vanilla run. In the
final video's time the new section p covers frames F + 4 p W .. F + 4 (p + 1) W - 1 (F input frames, W the window):
prompt schedules, keyframes and the callback's start_s / end_s count from the input's first frame.
"""
import dataclasses
from pathlib import Path

import numpy as np
import torch

from framepack_native.frames import FrameStore, to_uint8
from framepack_native.sections import HISTORY_SIZES
from framepack_native.section_loop import LoopState

DEFAULT_CONTEXT_LATENTS = sum(HISTORY_SIZES)  # 19: the whole history a vanilla section reads


def _frames_of(video):
    """A path or (F, 3, H, W) frames -> (F, 3, H, W) uint8 or float32 in [0, 1], on the CPU; ValueError naming it."""
    if isinstance(video, (str, Path)):
        path = Path(video)
        if not path.is_file():
            raise ValueError(f"{video}: no such video file" if not path.exists() else f"{video}: not a regular file")
        try:
            import av

            with av.open(str(path)) as container:
                pictures = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except Exception as e:  # noqa: BLE001 - PyAV raises its own error types for damaged or foreign files
            raise ValueError(f"{video}: cannot read the video ({type(e).__name__}: {e})".replace("\n", " ")) from None
        if not pictures:
            raise ValueError(f"{video}: the video holds no frames")
        return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).contiguous()  # (F, 3, H, W) uint8
    if isinstance(video, np.ndarray):
        video = torch.from_numpy(video)
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"video must be a file path or (F, 3, H, W) frames, got {type(video).__name__}")
    if video.dim() != 4 or video.shape[1] != 3 or video.shape[0] < 1:
        raise ValueError(f"video frames must be (F, 3, H, W) with F >= 1, got {tuple(video.shape)}")
    video = video.detach().cpu()
    if video.dtype == torch.uint8:
        return video
    if not video.is_floating_point():
        raise ValueError(f"video frames must be uint8 or float in [0, 1], got {video.dtype}")
    video = video.float()
    if not bool(torch.isfinite(video).all()) or video.min() < 0 or video.max() > 1:
        raise ValueError("float video frames must be finite and in [0, 1]")
    return video


@dataclasses.dataclass
class VideoSource:
    """The video to extend: frames (F, 3, H, W) (uint8 or float32 in [0, 1]) and the context latents c it gives."""
    frames: torch.Tensor
    context: int
    temporal_ratio: int = 4

    @property
    def first_frame(self):
        return self.frames[0]

    @property
    def num_frames(self):
        return self.frames.shape[0]

    def size(self):
        return tuple(self.frames.shape[2:])

    def check_size(self, height, width):
        if (height, width) != self.size():
            raise ValueError(f"the video to extend is {self.size()[0]} x {self.size()[1]}; the new frames must be "
                             f"the same size, got height x width {height} x {width}")

    def fingerprint(self):
        from framepack_native.run_state import tensor_digest
        return [tensor_digest(self.frames), self.context]

    def unit(self):
        """The frames as float32 in [0, 1]."""
        return self.frames.float() / 255 if self.frames.dtype == torch.uint8 else self.frames

    def overlap(self, window):
        """Frames the first new section cross-fades with the input's end: 4 (min(c, window) - 1) + 1."""
        return self.temporal_ratio * (min(self.context, window) - 1) + 1

    def head(self, batch, storage, window):
        """The input frames before the first overlap, (B, F - overlap, 3, H, W) in the FrameStore's storage dtype:
        the output's first frames, exactly the input's."""
        head = self.frames[None].expand(batch, -1, -1, -1, -1)[:, :self.num_frames - self.overlap(window)]
        if storage == "uint8":
            return (head if head.dtype == torch.uint8 else to_uint8(head)).contiguous()
        return (head.float() / 255 if head.dtype == torch.uint8 else head).contiguous()

    def start(self, pipe, storage, batch, device, window, image_latents):
        """-> the LoopState before the first new section: the context latents behind a zero history, and a
        FrameStore holding the input frames (their last `overlap` ones as the device edge the first join blends)."""
        from framepack_native.encoding import encode_context
        context = encode_context(pipe, self.unit()[self.num_frames - (self.temporal_ratio * (self.context - 1) + 1):],
                                 device).expand(batch, -1, -1, -1, -1)  # (B, C, c, h, w)
        B, C, _, h, w = context.shape
        history = torch.cat((torch.zeros(B, C, sum(HISTORY_SIZES), h, w, device=device), context), dim=2)
        n = self.overlap(window)
        store = FrameStore(storage)
        if self.num_frames > n:
            store.chunks.append(self.head(batch, storage, window))
        tail = self.unit()[self.num_frames - n:].permute(1, 0, 2, 3)[None]  # (1, 3, n, H, W) in [0, 1]
        store.edge, store.side = (tail * 2 - 1).expand(batch, -1, -1, -1, -1).to(device).clone(), "back"
        return LoopState(history, self.context, [], store, image_latents, None)


def read_source(video, sampling_type, context_latents, temporal_ratio=4):
    """Check and read a video to extend -> VideoSource; ValueError naming the culprit (before any model runs)."""
    if sampling_type != "vanilla":
        raise ValueError("extending a video needs vanilla sampling (the F1 model; sampling_type='vanilla', "
                         "--sampling vanilla): inverted anti-drifting generates the end first and cannot continue a given beginning")
    if isinstance(context_latents, bool) or not isinstance(context_latents, int) \
            or not 1 <= context_latents <= DEFAULT_CONTEXT_LATENTS:
        raise ValueError(f"context_latents must be an int in 1..{DEFAULT_CONTEXT_LATENTS} (the history a section "
                         f"reads), got {context_latents!r}")
    frames = _frames_of(video)
    if frames.shape[2] % 16 or frames.shape[3] % 16:
        raise ValueError(f"the video to extend is {frames.shape[2]} x {frames.shape[3]}: height and width must be "
                         "multiples of 16")
    available = (frames.shape[0] - 1) // temporal_ratio + 1
    return VideoSource(frames, min(context_latents, available), temporal_ratio)


def extended_plan(plan, source, fps=30):
    """The section plan placed after the input video (module docstring); the plan itself without a source."""
    if source is None:
        return plan
    F, r = source.num_frames, source.temporal_ratio
    out = []
    for s in plan:
        window = s.indices_latents.numel()
        start, end = F + r * s.position * window, F + r * (s.position + 1) * window - 1
        changes = dict(start_frame=start, end_frame=end, start_s=start / fps, end_s=(end + 1) / fps)
        if s.position == 0:
            k = min(source.context, window)
            changes.update(decode_latents=k + window, overlap=source.overlap(window))
        out.append(dataclasses.replace(s, **changes))
    return out
