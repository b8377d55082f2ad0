"""FramePack's section schedule: which frame indices and history latents each section sees.

Two sampling modes (paper Fig. 2):
  inverted_anti_drifting (FramePackI2V_HY): sections are generated from the end of the video back
      towards the start image; the start image is the prefix, the 1x/2x/4x history (sizes 1, 2, 16) is
      what was generated *after* the current window; padding indices leave room for unwritten sections.
  vanilla (F1): sections go forward in time; the history (sizes 16, 2, 1) is what came before.
"""
import dataclasses

import torch

SAMPLING_TYPES = ("inverted_anti_drifting", "vanilla")
HISTORY_SIZES = {"inverted_anti_drifting": (1, 2, 16), "vanilla": (16, 2, 1)}


@dataclasses.dataclass(frozen=True)
class SectionLayout:
    """Frame indices (1-D int64) of one section's inputs: the noisy window, clean (prefix + 1x), 2x and 4x."""
    latents: torch.Tensor
    clean: torch.Tensor
    history_2x: torch.Tensor
    history_4x: torch.Tensor


def num_sections(num_frames, latent_window_size, temporal_ratio=4):
    """How many sections make num_frames video frames (each section decodes to (window - 1) * 4 + 1 frames)."""
    window_frames = (latent_window_size - 1) * temporal_ratio + 1
    return max(1, (num_frames + window_frames - 1) // window_frames)


def padding_schedule(sections):
    """Inverted anti-drifting padding (in windows) per section: n-1, ..., 0, or 3, 2, ..., 2, 1, 0 past 4 sections."""
    if sections > 4:
        return [3] + [2] * (sections - 3) + [1, 0]
    return list(reversed(range(sections)))


def section_layout(sampling_type, latent_window_size, padding_windows=0):
    """The index layout of one section. padding_windows only applies to inverted anti-drifting."""
    if sampling_type == "inverted_anti_drifting":
        sizes = [1, padding_windows * latent_window_size, latent_window_size, 1, 2, 16]
        prefix, _, window, h1, h2, h4 = torch.arange(sum(sizes)).split(sizes)
    elif sampling_type == "vanilla":
        sizes = [1, 16, 2, 1, latent_window_size]
        prefix, h4, h2, h1, window = torch.arange(sum(sizes)).split(sizes)
    else:
        raise ValueError(f"unknown sampling type {sampling_type!r}; expected one of {SAMPLING_TYPES}")
    return SectionLayout(latents=window, clean=torch.cat((prefix, h1)), history_2x=h2, history_4x=h4)


def split_history(history, sampling_type):
    """History buffer (B, C, T, H, W) -> (1x, 2x, 4x) latents of the current section (newest side of the buffer)."""
    sizes = HISTORY_SIZES[sampling_type]
    if sampling_type == "inverted_anti_drifting":
        h1, h2, h4 = history[:, :, :sum(sizes)].split(sizes, dim=2)
    else:
        h4, h2, h1 = history[:, :, -sum(sizes):].split(sizes, dim=2)
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
