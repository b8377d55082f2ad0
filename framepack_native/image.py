"""Input images: loading, and the reference pipeline's two preprocessings.

vae_pixels: diffusers' VideoProcessor.preprocess(image, height, width) -> (1, 3, H, W) in [-1, 1].
siglip_pixels: HunyuanVideoFramepackPipeline.encode_image on those pixels: back to [0, 1], then the
SiglipImageProcessor of feature_extractor/ with do_rescale=False. Without torchvision transformers runs
its PIL processor, which this reproduces: quantise to uint8 (truncating), PIL resize, /255, normalise.
"""
import dataclasses
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F

from framepack_native.configs import config_from_dict, is_kind, read_json
from framepack_native.weights import CheckpointError

RESIZE_MODES = ("default", "crop")


def load_image(image):
    """A path, PIL image, numpy array or tensor -> PIL RGB image, or float32 tensor (3, H, W) in [0, 1].

    Paths are opened with their EXIF orientation applied (diffusers' load_image); 16-bit grey images are
    scaled to 8 bits, 32-bit integer or float ones are refused (no standard range). uint8 arrays/tensors
    ((H, W, 3) numpy, (3, H, W) torch, or 2-D grey) become PIL images; float ones, in [0, 1], stay tensors:
    numpy (H, W, 3), torch (3, H, W) or (1, 3, H, W).
    """
    if isinstance(image, (str, Path)):
        try:
            with PIL.Image.open(image) as img:
                return _to_rgb(PIL.ImageOps.exif_transpose(img))
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
            raise ValueError(f"{image}: cannot read image ({e})") from None
    if isinstance(image, PIL.Image.Image):
        return _to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            return PIL.Image.fromarray(image).convert("RGB")
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"a float numpy image must be (H, W, 3), got shape {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W)
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"unsupported image type {type(image).__name__}: expected a path, PIL image, "
                         "numpy array or tensor")
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dtype == torch.uint8:
        array = image.cpu().numpy() if image.dim() == 2 else image.permute(1, 2, 0).cpu().numpy()
        return PIL.Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"a float image tensor must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    image = image.detach().float().cpu()
    lo, hi = image.min().item(), image.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"a float image must hold values in [0, 1], got [{lo:.3g}, {hi:.3g}]")
    return image


def _to_rgb(image):
    """PIL image -> RGB; 16-bit grey (I;16*) keeps its top 8 bits (Pillow's own conversion clips it at 255)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        grey = np.asarray(image).astype(np.int64)  # (H, W) in 0..65535
        return PIL.Image.fromarray((grey >> 8).astype(np.uint8)).convert("RGB")
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "32-bit float"
        raise ValueError(f"mode {image.mode} ({kind} pixels) has no standard range; save the image with 8 or 16 "
                         "bits per channel")
    return image.convert("RGB")


def _resize_and_crop(image, width, height, resample):
    """Scale to cover width x height keeping the aspect ratio, then center crop (diffusers' resize_mode="crop")."""
    src_w = width if width / height > image.width / image.height else image.width * height // image.height
    src_h = height if width / height <= image.width / image.height else image.height * width // image.width
    out = PIL.Image.new("RGB", (width, height))
    out.paste(image.resize((src_w, src_h), resample=resample), box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return out


def vae_pixels(image, height, width, resize_mode="default"):
    """Any load_image input -> (1, 3, height, width) float32 in [-1, 1] (diffusers' VaeImageProcessor.preprocess).

    PIL images: Lanczos resize to height x width ("default" stretches, "crop" keeps the aspect ratio and
    center crops). Float tensors: nearest-neighbour interpolation, as diffusers does for tensors.
    """
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ValueError(f"height and width must be positive ints, got {height!r} x {width!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode {resize_mode!r}: expected one of {RESIZE_MODES}")
    image = load_image(image)
    if isinstance(image, PIL.Image.Image):
        if resize_mode == "crop":
            image = _resize_and_crop(image, width, height, PIL.Image.LANCZOS)
        else:
            image = image.resize((width, height), resample=PIL.Image.LANCZOS)
        x = torch.from_numpy(np.asarray(image).astype(np.float32) / 255.0).permute(2, 0, 1)[None]  # (1, 3, H, W)
    else:
        if resize_mode != "default":
            raise ValueError(f"resize_mode {resize_mode!r} needs a PIL image, path or uint8 array, not a float tensor")
        x = F.interpolate(image[None], size=(height, width))  # (1, 3, H, W)
    return 2.0 * x - 1.0


@dataclasses.dataclass(frozen=True)
class SiglipProcessorConfig:
    """The fields of feature_extractor/preprocessor_config.json that the SigLIP preprocessing uses."""
    size: tuple = (384, 384)             # (height, width)
    resample: int = 3                    # PIL filter code (3 = bicubic)
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = (0.5, 0.5, 0.5)
    do_resize: bool = True
    do_normalize: bool = True

    def __post_init__(self):
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (height, width) > 0, got {self.size}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"image_mean / image_std must hold 3 values (std > 0), got {self.image_mean} / "
                             f"{self.image_std}")
        if self.resample not in (0, 1, 2, 3, 4, 5):
            raise ValueError(f"resample must be a PIL filter code 0..5, got {self.resample}")

    @classmethod
    def from_pretrained(cls, folder):
        """Read feature_extractor/preprocessor_config.json (transformers' SiglipImageProcessor fields); a damaged
        file is a CheckpointError naming the file and the field."""
        path = Path(folder) / "preprocessor_config.json"
        doc = read_json(path)
        size = doc.get("size", {"height": 224, "width": 224})
        if not (isinstance(size, dict) and "height" in size and "width" in size):
            raise CheckpointError(f"{path}: size {size!r} is not supported; expected {{'height': H, 'width': W}}")

        def three(v):  # transformers accepts one number for all channels
            return [v] * 3 if is_kind(v, float) else v

        fields = dict(size=[size["height"], size["width"]], resample=doc.get("resample", 3),
                      image_mean=three(doc.get("image_mean", 0.5)), image_std=three(doc.get("image_std", 0.5)),
                      do_resize=doc.get("do_resize", True), do_normalize=doc.get("do_normalize", True))
        return config_from_dict(cls, fields, path)


def siglip_pixels(pixels, config=SiglipProcessorConfig()):
    """VAE-range pixels (B, 3, H, W) in [-1, 1] -> SigLIP pixel_values (B, 3, h, w) float32 on the same device."""
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
    x = ((pixels.detach().float() + 1) / 2).cpu().numpy()
    mean = np.array(config.image_mean, dtype=np.float32)[:, None, None]
    std = np.array(config.image_std, dtype=np.float32)[:, None, None]
    out = []
    for img in x:  # (3, H, W) float32 in [0, 1]
        if config.do_resize:
            # PIL holds uint8: scaled in float64, cast to float32, truncated (transformers' to_pil_image)
            u8 = (np.clip(img, 0, 1).astype(np.float64) * 255).astype(np.float32).astype(np.uint8)
            pil = PIL.Image.fromarray(np.ascontiguousarray(u8.transpose(1, 2, 0)))
            pil = pil.resize((config.size[1], config.size[0]), resample=config.resample)
            img = (np.asarray(pil).astype(np.float64) * (1 / 255)).astype(np.float32).transpose(2, 0, 1)
        if config.do_normalize:
            img = (img - mean) / std
        out.append(torch.from_numpy(np.ascontiguousarray(img)))
    return torch.stack(out).to(pixels.device)  # (B, 3, h, w)
