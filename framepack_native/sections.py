"""FramePack's section schedule: what each section reads, how it joins, and where it lands in the video.

A video of S sections of W latents is 1 + S * W latents (latent 0 is the start image) and 4 S W + 1 frames: latent
j >= 1 covers frames 4j-3..4j, so the section at position p covers frames 4pW+1..4(p+1)W (position 0 also frame 0).
`section_plan` lists the Sections in generation order; the pipeline drives each one's helpers. Two modes (paper Fig. 2):
  inverted_anti_drifting (FramePackI2V_HY): the end first, walking back to the start image (position S-1 first).
      Indices [start | padding | window | 1x | 2x | 4x]: the 1x/2x/4x history (1, 2, 16 latents) is the future,
      already generated; the padding (padding_schedule) leaves room for the sections not yet written. The buffer is
      newest-first: latents join in front (the last section also brings the start latent) and so do the pixels.
      With a last image, the first section's 1x clean latent is the last image's latent.
  vanilla (F1): forward in time. Indices [start | 4x | 2x | 1x | window]: the history (16, 2, 1) is the past; the
      buffer starts with the start latent, latents and pixels join behind.
The first section decodes every latent generated so far; a later one decodes its W latents with the W next to them
(the inverted last one: with the start latent too) and cross-fades the 4(W-1)+1 frames they share (soft_append).
"""
from dataclasses import dataclass, field

import torch

SAMPLING_TYPES = ("inverted_anti_drifting", "vanilla")
HISTORY_SIZES = (1, 2, 16)  # latent frames of the 1x, 2x and 4x history


def num_sections(num_frames, latent_window_size, temporal_ratio=4):
    """How many sections make num_frames video frames (each section decodes to (window - 1) * 4 + 1 frames)."""
    window_frames = (latent_window_size - 1) * temporal_ratio + 1
    return max(1, (num_frames + window_frames - 1) // window_frames)


def padding_schedule(sections):
    """Padding (in windows) of each inverted anti-drifting section, first generated first.

    As FramePack's demo and diffusers' pipeline: [n-1, ..., 1, 0], or [3, 2, ..., 2, 1, 0] past 4 sections.
    """
    if sections < 1:
        raise ValueError(f"sections must be >= 1, got {sections}")
    if sections > 4:
        return [3] + [2] * (sections - 3) + [1, 0]
    return list(reversed(range(sections)))


def section_frame_indices(sampling_type, latent_window_size, latent_padding_size=0, history_sizes=(1, 2, 16)):
    """Frame indices of one section: (latents, clean, history_2x, history_4x), 1-D int64 tensors.

    history_sizes = (1x, 2x, 4x) latent frames. Inverted anti-drifting lays out
    [start image | padding | window | 1x | 2x | 4x] (the history is the future, already generated);
    vanilla lays out [start image | 4x | 2x | 1x | window]. The clean latents are the start image + the 1x history.
    """
    if sampling_type not in SAMPLING_TYPES:
        raise ValueError(f"unknown sampling type {sampling_type!r}; expected one of {SAMPLING_TYPES}")
    if latent_window_size < 1 or latent_padding_size < 0 or len(history_sizes) != 3 or min(history_sizes) < 1:
        raise ValueError(f"bad section layout: window {latent_window_size}, padding {latent_padding_size}, "
                         f"history sizes {tuple(history_sizes)}")
    n1, n2, n4 = history_sizes
    if sampling_type == "inverted_anti_drifting":
        sizes = [1, latent_padding_size, latent_window_size, n1, n2, n4]
        prefix, _, latents, h1, h2, h4 = torch.arange(sum(sizes)).split(sizes)
    else:
        if latent_padding_size:
            raise ValueError(f"vanilla sampling has no padding sections, got latent_padding_size={latent_padding_size}")
        sizes = [1, n4, n2, n1, latent_window_size]
        prefix, h4, h2, h1, latents = torch.arange(sum(sizes)).split(sizes)
    return latents, torch.cat((prefix, h1)), h2, h4


def split_history(history, sampling_type):
    """History buffer (B, C, T, H, W) -> (1x, 2x, 4x) latents of the current section (newest side of the buffer)."""
    n = sum(HISTORY_SIZES)
    if sampling_type == "inverted_anti_drifting":
        h1, h2, h4 = history[:, :, :n].split(HISTORY_SIZES, dim=2)
    else:
        h4, h2, h1 = history[:, :, -n:].split(HISTORY_SIZES[::-1], dim=2)
    return h1, h2, h4


def soft_append(first, second, overlap):
    """Join two videos (B, C, F, H, W) along time, cross-fading `overlap` frames linearly (first fades out)."""
    if overlap <= 0:
        return torch.cat((first, second), dim=2)
    if first.shape[2] < overlap or second.shape[2] < overlap:
        raise ValueError(f"cannot overlap {overlap} frames of videos of {first.shape[2]} and {second.shape[2]}")
    w = torch.linspace(1, 0, overlap, dtype=first.dtype, device=first.device).view(1, 1, -1, 1, 1)
    blended = w * first[:, :, -overlap:] + (1 - w) * second[:, :, :overlap]
    return torch.cat((first[:, :, :-overlap], blended, second[:, :, overlap:]), dim=2).to(first)


def history_init(start_latents, sampling_type):
    """The history buffer before the first section and how many of its latents are real: (history, generated).

    start_latents (B, C, 1, H, W) -> zeros (B, C, 19, H, W) (sum(HISTORY_SIZES)), followed by the start latent for
    vanilla (generated = 1; its history is the past); inverted starts empty (generated = 0; its history is the future).
    """
    if sampling_type not in SAMPLING_TYPES:
        raise ValueError(f"unknown sampling type {sampling_type!r}; expected one of {SAMPLING_TYPES}")
    B, C, _, H, W = start_latents.shape
    history = torch.zeros(B, C, sum(HISTORY_SIZES), H, W, device=start_latents.device)
    if sampling_type == "vanilla":
        return torch.cat((history, start_latents), dim=2), 1  # (B, C, 20, H, W)
    return history, 0


@dataclass(frozen=True)
class Section:
    """One section of a section_plan: what it reads, how its latents and pixels join, where it lands in the video."""
    sampling_type: str
    index: int  # k, in generation order
    position: int  # place in the final video, 0 = first (inverted generates position S-1 first)
    padding: int  # latent frames between the start image and the window (inverted only)
    indices_latents: torch.Tensor = field(compare=False)  # (window,) int64, section_frame_indices
    indices_clean: torch.Tensor = field(compare=False)  # (2,) start image + 1x history
    indices_2x: torch.Tensor = field(compare=False)  # (2,)
    indices_4x: torch.Tensor = field(compare=False)  # (16,)
    uses_last_image: bool  # the 1x clean latent is the last image's latent
    join: str  # "front" | "back": the side of the history buffer (and of the video) the section joins
    adds_start_latent: bool  # the start latent joins the history with this section's latents
    decode_latents: int | None  # the newest real latents to decode; None = all generated so far
    overlap: int  # video frames cross-faded with the video so far: 4 (window - 1) + 1
    start_frame: int  # first frame in the final video
    end_frame: int  # last frame (inclusive)
    start_s: float  # start_frame / fps
    end_s: float  # (end_frame + 1) / fps: consecutive sections tile [0, duration)

    def read_history(self, history, last_latents=None):
        """History buffer (B, C, T, H, W) -> (1x, 2x, 4x) latents (B, C, 1 | 2 | 16, H, W) this section conditions on;
        with uses_last_image the 1x is last_latents (B, C, 1, H, W)."""
        h1, h2, h4 = split_history(history, self.sampling_type)
        if self.uses_last_image:
            if last_latents is None:
                raise ValueError(f"section {self.index} was planned with a last image: pass its latents")
            h1 = last_latents
        return h1, h2, h4

    def join_latents(self, history, generated, latents, start_latents):
        """Add the section's latents (B, C, window, H, W) (after the start latent (B, C, 1, H, W) when
        adds_start_latent) to the buffer (B, C, T, H, W) on the join side -> (history (B, C, T', H, W), generated)."""
        if self.adds_start_latent:
            latents = torch.cat((start_latents, latents), dim=2)  # (B, C, 1 + window, H, W)
        history = torch.cat((latents, history) if self.join == "front" else (history, latents), dim=2)
        return history, generated + latents.shape[2]

    def real_latents(self, history, generated):
        """The `generated` real latents of the buffer (B, C, T, H, W), in video order: (B, C, generated, H, W)."""
        if self.join == "front":
            return history[:, :, :generated]
        return history[:, :, history.shape[2] - generated:]

    def latents_to_decode(self, history, generated):
        """The latents this section decodes, (B, C, decode_latents or generated, H, W), from the newest side."""
        real = self.real_latents(history, generated)
        n = self.decode_latents
        if n is None:
            return real
        return real[:, :, :n] if self.join == "front" else real[:, :, real.shape[2] - n:]

    def join_pixels(self, video, current):
        """Join this section's decoded frames (B, 3, F', H, W) to the video so far (B, 3, F, H, W) or None, on the join
        side, cross-fading `overlap` frames -> (B, 3, F + F' - overlap, H, W) (the first section: current itself)."""
        if video is None:
            return current
        if self.join == "front":
            return soft_append(current, video, self.overlap)
        return soft_append(video, current, self.overlap)


def section_plan(sampling_type, sections, latent_window_size, *, last_image=False, fps=30, temporal_ratio=4):
    """The sections of a video, in generation order (module docstring; FramePack's demo worker loop)."""
    if sampling_type not in SAMPLING_TYPES:
        raise ValueError(f"unknown sampling type {sampling_type!r}; expected one of {SAMPLING_TYPES}")
    if sections < 1:
        raise ValueError(f"sections must be >= 1, got {sections}")
    if latent_window_size < 1:
        raise ValueError(f"latent_window_size must be >= 1, got {latent_window_size}")
    if last_image and sampling_type != "inverted_anti_drifting":
        raise ValueError("last_image needs sampling_type='inverted_anti_drifting' (vanilla sampling walks forward "
                         "from the first image and cannot aim at a last one)")
    if not fps > 0 or temporal_ratio < 1:
        raise ValueError(f"fps must be > 0 and temporal_ratio >= 1, got {fps} and {temporal_ratio}")
    inverted, window = sampling_type == "inverted_anti_drifting", latent_window_size
    paddings = padding_schedule(sections) if inverted else [0] * sections
    plan = []
    for k in range(sections):
        last = k == sections - 1
        position = sections - 1 - k if inverted else k
        padding = paddings[k] * window
        start_frame = 0 if position == 0 else temporal_ratio * position * window + 1
        end_frame = temporal_ratio * (position + 1) * window
        plan.append(Section(
            sampling_type, k, position, padding, *section_frame_indices(sampling_type, window, padding),
            uses_last_image=bool(last_image) and k == 0, join="front" if inverted else "back",
            adds_start_latent=inverted and last, decode_latents=None if k == 0 else 2 * window + (inverted and last),
            overlap=(window - 1) * temporal_ratio + 1, start_frame=start_frame, end_frame=end_frame,
            start_s=start_frame / fps, end_s=(end_frame + 1) / fps))
    return plan


def device_history_frames(latent_window_size):
    """Latent frames of the history kept on the device: what a section reads (1 + 2 + 16) or decodes (2 W + 1)."""
    return max(sum(HISTORY_SIZES), 2 * latent_window_size + 1)
