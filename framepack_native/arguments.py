"""The generation arguments a FramePack run accepts, checked before any model runs (the CLI checks them too, before
anything loads), and the small rules around them: classifier-free guidance's rescale and the input image's size."""
import math

from framepack_native.conditioning import prompt_schedule_of
from framepack_native.image import load_image
from framepack_native.presets import section_count
from framepack_native.sections import SAMPLING_TYPES, num_sections, section_plan

SAMPLERS = ("euler", "unipc")


def rescale_guidance(pred, pred_pos, rescale):
    """Guidance rescale (Lin et al. 2023, Sec. 3.4): match the std of the guided prediction to the positive one."""
    if rescale == 0:
        return pred
    dims = list(range(1, pred.ndim))
    rescaled = pred * (pred_pos.std(dim=dims, keepdim=True) / pred.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * pred


def check_arguments(prompt, last_image, height, width, num_frames, latent_window_size, num_inference_steps,
                    sampling_type, sampler, seconds=None, negative_prompt=None):
    """Raise ValueError naming the culprit for generation arguments the pipeline cannot run (also used by the
    CLI before any model loads). height / width may both be None (the resolution bucket decides)."""
    schedule = prompt_schedule_of(prompt)  # ValueError for anything but the accepted forms
    texts = schedule.prompts if schedule is not None else [prompt] if isinstance(prompt, str) else prompt
    for name, group in (("prompt", texts), ("negative_prompt", negative_prompt)):
        for text in [group] if isinstance(group, str) else group or []:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:  # undecodable bytes on a command line arrive as lone surrogates
                raise ValueError(f"{name} is not valid UTF-8 text (at character {e.start})") from None
    if (height is None) != (width is None):
        raise ValueError(f"give both height and width or neither (the resolution bucket), got {height} x {width}")
    if height is not None and (height % 16 or width % 16 or height < 16 or width < 16):
        raise ValueError(f"height and width must be positive multiples of 16, got {height} x {width}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a finite number > 0, got {seconds}")
    if latent_window_size < 1 or num_inference_steps < 1:
        raise ValueError(f"latent_window_size ({latent_window_size}) and num_inference_steps "
                         f"({num_inference_steps}) must be >= 1")
    if sampling_type not in SAMPLING_TYPES:
        raise ValueError(f"unknown sampling type {sampling_type!r}; expected one of {SAMPLING_TYPES}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if last_image is not None and sampling_type != "inverted_anti_drifting":
        raise ValueError("last_image needs sampling_type='inverted_anti_drifting' (vanilla sampling walks "
                         "forward from the first image and cannot aim at a last one)")


def image_size(image):
    """(height, width) of a load_image input."""
    image = load_image(image)
    return (image.height, image.width) if hasattr(image, "height") else tuple(image.shape[-2:])


def run_sections_count(preset, seconds, num_frames, latent_window_size, temporal_ratio=4):
    """How many sections a run makes: num_frames (enough sections to cover them), else seconds as the preset counts
    them (presets.section_count), else 5 s (official) or diffusers' default of 129 frames."""
    if num_frames is not None:
        return num_sections(num_frames, latent_window_size, temporal_ratio)
    if seconds is not None or preset.length == "sections":
        return section_count(5.0 if seconds is None else seconds, latent_window_size, preset.length, temporal_ratio)
    return num_sections(129, latent_window_size, temporal_ratio)


def run_plan(preset, sampling_type, seconds, num_frames, latent_window_size, last_image=False, temporal_ratio=4):
    """The section_plan of a run (generation order), from its length arguments: what the CLI checks a prompt
    schedule and keyframes against before any model loads."""
    sections = run_sections_count(preset, seconds, num_frames, latent_window_size, temporal_ratio)
    return section_plan(sampling_type, sections, latent_window_size, last_image=last_image,
                        temporal_ratio=temporal_ratio)
