"""Input images: loading, resolution buckets, and the two ways of preparing the picture (official app, diffusers).

diffusers (preset "diffusers"):
    vae_pixels: diffusers' VideoProcessor.preprocess(image, height, width) -> (1, 3, H, W) in [-1, 1] (stretch).
    siglip_pixels: HunyuanVideoFramepackPipeline.encode_image on those pixels: back to [0, 1], then the
    SiglipImageProcessor of feature_extractor/ with do_rescale=False. Without torchvision transformers runs
    its PIL processor, which this reproduces: quantise to uint8 (truncating), PIL resize, /255, normalise.
official app (preset "official", demo_gradio.py worker()):
    nearest_bucket: the app's bucket for the image's aspect ratio (diffusers_helper/bucket_tools.py);
    center_crop_uint8: scale to cover, Lanczos, centre crop (resize_and_center_crop) -> the exact uint8 picture;
    the VAE gets it as x / 127.5 - 1, SigLIP's processor gets the uint8 picture itself (siglip_pixels_uint8).
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
# (height, width) buckets of the official app (diffusers_helper/bucket_tools.py), by resolution
BUCKETS = {640: ((416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640), (640, 608),
                 (672, 576), (704, 544), (768, 512), (832, 480), (864, 448), (960, 416))}


def nearest_bucket(height, width, resolution=640):
    """The bucket (h, w) whose aspect ratio is nearest height : width, by |height * w - width * h|.

    Ties go to the later bucket of the list, as the app's `<=` does: a square picture gets 640 x 608 (h x w).
    """
    if resolution not in BUCKETS:
        raise ValueError(f"resolution {resolution!r} has no buckets; known: {sorted(BUCKETS)}")
    best, best_err = None, None
    for h, w in BUCKETS[resolution]:
        err = abs(height * w - width * h)
        if best_err is None or err <= best_err:
            best, best_err = (h, w), err
    return best


def load_image(image):
    """A path, PIL image, numpy array or tensor -> PIL RGB image, or float32 tensor (3, H, W) in [0, 1].

    Paths are opened with their EXIF orientation applied (diffusers' load_image); 16-bit grey images are
    scaled to 8 bits, 32-bit integer or float ones are refused (no standard range). uint8 arrays/tensors
    ((H, W, 3) numpy, (3, H, W) torch, or 2-D grey) become PIL images; float ones, in [0, 1], stay tensors:
    numpy (H, W, 3), torch (3, H, W) or (1, 3, H, W).
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.exists() and not path.is_file():  # a FIFO would block open() forever, a device read without end
            raise ValueError(f"{image}: cannot read image (not a regular file)")
        try:
            with PIL.Image.open(path) as img:
                img.load()  # decode now: a damaged image data chunk fails here, not later
                return _to_rgb(PIL.ImageOps.exif_transpose(img))
        except Exception as e:  # noqa: BLE001 - PIL's decoders raise many types (SyntaxError, struct.error, ...)
            plain = isinstance(e, (OSError, ValueError, PIL.Image.DecompressionBombError))
            why = str(e) if plain else f"{type(e).__name__}: {e}"
            raise ValueError(f"{image}: cannot read image ({why})".replace("\n", " ")) from None
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


def to_uint8_picture(image):
    """Any load_image input -> (H, W, 3) uint8 numpy array (float images in [0, 1] rounded to the nearest level)."""
    image = load_image(image)
    if isinstance(image, PIL.Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    return (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, 3)


def center_crop_uint8(picture, height, width):
    """(H, W, 3) uint8 -> (height, width, 3) uint8: the official app's resize_and_center_crop.

    Scaled (Lanczos) to cover height x width with the aspect ratio kept, sizes rounded; then the central box,
    whose fractional edges PIL rounds half to even. A picture already of that size is returned as it is.
    """
    src_h, src_w = picture.shape[:2]
    if (src_h, src_w) == (height, width):
        return picture
    scale = max(width / src_w, height / src_h)
    new_w, new_h = int(round(src_w * scale)), int(round(src_h * scale))
    resized = PIL.Image.fromarray(picture).resize((new_w, new_h), PIL.Image.LANCZOS)
    box = ((new_w - width) / 2, (new_h - height) / 2, (new_w + width) / 2, (new_h + height) / 2)
    return np.asarray(resized.crop(box)).copy()


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
    """VAE-range pixels (B, 3, H, W) in [-1, 1] -> SigLIP pixel_values (B, 3, h, w) float32 on the same device.

    diffusers' path: with do_resize the [0, 1] floats become uint8 for PIL by truncation (scaled in float64, cast
    to float32, then to uint8: transformers' to_pil_image), so ~3 % of the values land one level below the picture's.
    """
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
    x = ((pixels.detach().float() + 1) / 2).cpu().numpy()
    out = []
    for img in x:  # (3, H, W) float32 in [0, 1]
        if config.do_resize:
            u8 = (np.clip(img, 0, 1).astype(np.float64) * 255).astype(np.float32).astype(np.uint8)
            out.append(siglip_pixels_uint8(u8.transpose(1, 2, 0), config)[0])
        else:
            out.append(_siglip_normalize(img, config))
    return torch.stack(out).to(pixels.device)  # (B, 3, h, w)


def siglip_pixels_uint8(picture, config=SiglipProcessorConfig()):
    """(H, W, 3) uint8 -> SigLIP pixel_values (1, 3, h, w) float32: the processor on the picture itself (the
    official app's hf_clip_vision_encode): PIL resize, rescale by 1/255 in float64, cast, normalise."""
    if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError(f"picture must be (H, W, 3) uint8, got {picture.shape} {picture.dtype}")
    if config.do_resize:
        pil = PIL.Image.fromarray(np.ascontiguousarray(picture))
        picture = np.asarray(pil.resize((config.size[1], config.size[0]), resample=config.resample))
    img = (picture.astype(np.float64) * (1 / 255)).astype(np.float32).transpose(2, 0, 1)  # (3, h, w)
    return _siglip_normalize(img, config)[None]


def _siglip_normalize(img, config):
    """(3, h, w) float32 in [0, 1] -> normalised torch tensor (when the config asks for it)."""
    if config.do_normalize:
        mean = np.array(config.image_mean, dtype=np.float32)[:, None, None]
        std = np.array(config.image_std, dtype=np.float32)[:, None, None]
        img = (img - mean) / std
    return torch.from_numpy(np.ascontiguousarray(img))
