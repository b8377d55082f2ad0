"""FramePack's section schedule: which frame indices and history latents each section sees.

Two sampling modes (paper Fig. 2):
  inverted_anti_drifting (FramePackI2V_HY): sections are generated from the end of the video back
      towards the start image; the start image is the prefix, the 1x/2x/4x history (sizes 1, 2, 16) is
      what was generated *after* the current window; padding indices leave room for unwritten sections.
  vanilla (F1): sections go forward in time; the history (sizes 16, 2, 1) is what came before.
"""
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
