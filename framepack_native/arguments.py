"""The generation arguments a FramePack run accepts, checked before any model runs (the CLI checks them too, before
anything loads), and the small rules around them: classifier-free guidance's rescale and the input image's size."""
import math

from framepack_native.image import load_image
from framepack_native.sections import SAMPLING_TYPES

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
    if not isinstance(prompt, str) and not (isinstance(prompt, (list, tuple)) and prompt
                                            and all(isinstance(p, str) for p in prompt)):
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {type(prompt).__name__}")
    for name, texts in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        for text in [texts] if isinstance(texts, str) else texts or []:
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
