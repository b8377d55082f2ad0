"""Image preprocessing vs the reference pipeline: diffusers' VideoProcessor.preprocess (VAE input) and
transformers' SiglipImageProcessor as HunyuanVideoFramepackPipeline.encode_image calls it (SigLIP input).

Without torchvision transformers' SiglipImageProcessor is its PIL processor: that is what the reference
pipeline runs here and what is compared. Bound: max abs difference < 1e-6 (the same float32 operations).
"""
import json
import struct
import zlib

import numpy as np
import PIL.Image
import pytest
import torch

from framepack_native.image import SiglipProcessorConfig, load_image, siglip_pixels, vae_pixels
from framepack_native.weights import CheckpointError

# lllyasviel/flux_redux_bfl feature_extractor/preprocessor_config.json
FLUX_REDUX_PROCESSOR = {"do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
                        "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor",
                        "image_std": [0.5, 0.5, 0.5], "processor_class": "SiglipProcessor", "resample": 3,
                        "rescale_factor": 0.00392156862745098, "size": {"height": 384, "width": 384}}
BOUND = 1e-6


def _video_processor():
    from diffusers.video_processor import VideoProcessor
    return VideoProcessor(vae_scale_factor=8)


def _random_image(h, w, seed, mode="RGB"):
    g = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (h, w) if channels is None else (h, w, channels)
    # Smooth gradients plus noise: resampling filters see both edges and flat areas.
    base = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    noise = g.integers(0, 128, shape if channels else (h, w, 1))
    pixels = np.clip(base * 0.5 + noise, 0, 255)
    return PIL.Image.fromarray(pixels.astype(np.uint8).squeeze(-1) if channels is None else pixels.astype(np.uint8),
                               mode)


@pytest.mark.parametrize("size,target,mode", [
    ((333, 517), (320, 512), "default"),
    ((101, 77), (96, 128), "default"),
    ((480, 641), (640, 480), "crop"),
    ((517, 333), (304, 400), "crop"),
])
def test_vae_pixels_pil_matches_diffusers(size, target, mode):
    image = _random_image(*size, seed=size[0])
    ref = _video_processor().preprocess(image, target[0], target[1], resize_mode=mode)
    ours = vae_pixels(image, target[0], target[1], resize_mode=mode)
    assert ours.shape == ref.shape == (1, 3, *target)
    assert (ours - ref).abs().max().item() < BOUND


def test_vae_pixels_float_inputs_match_diffusers():
    g = torch.Generator().manual_seed(5)
    tensor = torch.rand(3, 131, 257, generator=g)
    ref = _video_processor().preprocess(tensor[None], 128, 256)
    assert (vae_pixels(tensor, 128, 256) - ref).abs().max().item() < BOUND
    array = tensor.permute(1, 2, 0).numpy()   # (H, W, 3) float in [0, 1]
    ref = _video_processor().preprocess(array, 96, 160)
    assert (vae_pixels(array, 96, 160) - ref).abs().max().item() < BOUND


def test_vae_pixels_uint8_and_non_rgb_inputs_become_rgb_pil():
    """uint8 arrays / tensors and grey or RGBA images go through the PIL path of their RGB conversion."""
    rgb = _random_image(70, 90, seed=1)
    ref = _video_processor().preprocess(rgb, 64, 96)
    array = np.asarray(rgb)
    assert (vae_pixels(array, 64, 96) - ref).abs().max().item() < BOUND
    assert (vae_pixels(torch.from_numpy(array).permute(2, 0, 1), 64, 96) - ref).abs().max().item() < BOUND
    for mode in ("L", "RGBA"):
        image = _random_image(70, 90, seed=2, mode=mode)
        ref = _video_processor().preprocess(image.convert("RGB"), 64, 96)
        assert (vae_pixels(image, 64, 96) - ref).abs().max().item() < BOUND


def _reference_siglip(pixels):
    from transformers import SiglipImageProcessor
    processor = SiglipImageProcessor(**{k: v for k, v in FLUX_REDUX_PROCESSOR.items()
                                        if k not in ("image_processor_type", "processor_class")})
    # The pipeline: (image + 1) / 2, then the processor with do_rescale=False.
    return processor(images=(pixels + 1) / 2.0, return_tensors="pt", do_rescale=False).pixel_values


@pytest.mark.parametrize("size,target", [((333, 517), (320, 512)), ((97, 211), (96, 208))])
def test_siglip_pixels_match_transformers(tmp_path, size, target):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(FLUX_REDUX_PROCESSOR))
    config = SiglipProcessorConfig.from_pretrained(tmp_path)
    assert config == SiglipProcessorConfig()
    pixels = torch.cat([vae_pixels(_random_image(*size, seed=s), *target) for s in (3, 4)])  # (2, 3, H, W)
    ref = _reference_siglip(pixels)
    ours = siglip_pixels(pixels, config)
    assert ours.shape == ref.shape == (2, 3, 384, 384)
    assert (ours - ref).abs().max().item() < BOUND


def test_siglip_pixels_other_processor_config():
    """A non-default config (bilinear, another size and mean/std) follows the file."""
    from transformers import SiglipImageProcessor
    fields = dict(size={"height": 224, "width": 256}, resample=2, image_mean=[0.4, 0.5, 0.6],
                  image_std=[0.2, 0.3, 0.25])
    config = SiglipProcessorConfig(size=(224, 256), resample=2, image_mean=(0.4, 0.5, 0.6), image_std=(0.2, 0.3, 0.25))
    pixels = vae_pixels(_random_image(150, 190, seed=9), 144, 192)
    ref = SiglipImageProcessor(**fields)(images=(pixels + 1) / 2.0, return_tensors="pt", do_rescale=False).pixel_values
    assert (siglip_pixels(pixels, config) - ref).abs().max().item() < BOUND


def test_load_image_from_path_with_exif_and_errors(tmp_path):
    image = _random_image(40, 60, seed=7)
    exif = image.getexif()
    exif[0x0112] = 6   # orientation: rotate 90 degrees clockwise when displayed
    image.save(tmp_path / "rotated.jpg", exif=exif)
    loaded = load_image(tmp_path / "rotated.jpg")
    assert loaded.size == (40, 60) and loaded.mode == "RGB"
    stored = np.asarray(PIL.Image.open(tmp_path / "rotated.jpg").convert("RGB"))  # as saved, not rotated
    assert np.array_equal(np.asarray(loaded), np.rot90(stored, k=-1))  # clockwise, not the other way
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png: cannot read image"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        load_image(torch.full((3, 8, 8), 2.0))
    with pytest.raises(ValueError, match="resize_mode 'crop' needs a PIL image"):
        vae_pixels(torch.rand(3, 8, 8), 8, 8, resize_mode="crop")


def write_png(path, pixels, width=None, height=None):
    """A PNG written byte by byte: 16-bit RGB from (H, W, 3) uint16 pixels (Pillow cannot save those), or with
    pixels=None only a header claiming width x height."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if pixels is None:
        header, body = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0), b""
    else:
        header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 16, 2, 0, 0, 0)
        body = chunk(b"IDAT", zlib.compress(b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + body + chunk(b"IEND", b""))
    return path


def test_load_image_16_bit_keeps_the_top_8_bits(tmp_path):
    """Pillow clips 16-bit grey (mode I;16) at 255 when converting to RGB: mid grey must stay mid grey."""
    grey = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    PIL.Image.fromarray(grey).save(tmp_path / "grey16.png")
    assert PIL.Image.open(tmp_path / "grey16.png").mode == "I;16"
    expected = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    for image in (tmp_path / "grey16.png", PIL.Image.fromarray(grey)):
        rgb = load_image(image)
        assert rgb.mode == "RGB" and (np.asarray(rgb) == expected[..., None]).all()
    # 16-bit RGB: Pillow itself reads it as 8-bit RGB (top bits); pinned so that a Pillow change shows up
    rgb16 = write_png(tmp_path / "rgb16.png", np.array([[[32768, 65535, 0]]], dtype=np.uint16))
    assert np.asarray(load_image(rgb16)).tolist() == [[[128, 255, 0]]]


def test_load_image_refuses_what_it_cannot_interpret(tmp_path):
    """32-bit float (mode F) or integer (mode I) pixels have no standard range; a decompression bomb is refused
    by Pillow: each is one ValueError naming the file."""
    PIL.Image.fromarray(np.full((4, 6), 0.5, dtype=np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match=r"float.tiff: cannot read image \(mode F \(32-bit float"):
        load_image(tmp_path / "float.tiff")
    PIL.Image.fromarray(np.full((4, 6), 200, dtype=np.int32)).save(tmp_path / "int32.tiff")
    with pytest.raises(ValueError, match=r"int32.tiff: cannot read image \(mode I \(32-bit integer"):
        load_image(tmp_path / "int32.tiff")
    with pytest.raises(ValueError, match=r"bomb.png: cannot read image \(Image size \(900000000 pixels\)"):
        load_image(write_png(tmp_path / "bomb.png", None, 30000, 30000))


@pytest.mark.parametrize("field,value,message", [
    ("size", {"height": "a", "width": 384}, 'field \'size\' must be a list of integers, got ["a", 384]'),
    ("size", [384, 384], "size [384, 384] is not supported"),
    ("image_mean", "abc", 'field \'image_mean\' must be a list of finite numbers, got "abc"'),
    ("image_mean", [0.5, float("nan"), 0.5], "field 'image_mean' must be a list of finite numbers"),
    ("image_std", [0.5, 0.5], "image_mean / image_std must hold 3 values (std > 0)"),
    ("image_std", 0, "image_mean / image_std must hold 3 values (std > 0)"),
    ("resample", "bicubic", 'field \'resample\' must be an integer, got "bicubic"'),
    ("resample", 7, "resample must be a PIL filter code 0..5, got 7"),
    ("do_resize", "yes", 'field \'do_resize\' must be true or false, got "yes"'),
    (None, [1, 2], "expected a JSON object at the top level, got a list"),
])
def test_processor_config_errors_name_the_file_and_field(tmp_path, field, value, message):
    doc = value if field is None else {**FLUX_REDUX_PROCESSOR, field: value}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError) as info:
        SiglipProcessorConfig.from_pretrained(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'preprocessor_config.json'}: ")
    assert message in str(info.value)


# The official app's picture preparation (framepack==0.0.9 diffusers_helper: bucket_tools, utils, clip_vision)

def _official_image_functions():
    from framepack.diffusers_helper.bucket_tools import find_nearest_bucket
    from tests.reference.official import official_functions
    crop = official_functions("framepack.diffusers_helper.utils", ["resize_and_center_crop"],
                              {"Image": PIL.Image, "np": np})["resize_and_center_crop"]
    return find_nearest_bucket, crop


def test_nearest_bucket_matches_the_official_app():
    from hypothesis import given, settings, strategies as st

    from framepack_native.image import nearest_bucket
    find_nearest_bucket, _ = _official_image_functions()

    @settings(max_examples=400, deadline=None)
    @given(st.integers(1, 5000), st.integers(1, 5000))
    def check(h, w):
        assert nearest_bucket(h, w, 640) == find_nearest_bucket(h, w, resolution=640)

    check()
    # ties: both 608 x 640 and 640 x 608 are 32 * h away for a square picture; the app's `<=` keeps the later one
    assert nearest_bucket(500, 500) == (640, 608)
    with pytest.raises(ValueError, match="resolution 512 has no buckets"):
        nearest_bucket(10, 10, 512)


@pytest.mark.parametrize("size,target", [((300, 500), (480, 832)), ((333, 517), (320, 240)), ((97, 211), (96, 208)),
                                         ((640, 608), (640, 608)), ((481, 833), (480, 832)), ((700, 350), (960, 416))])
def test_center_crop_matches_the_official_app(size, target):
    from framepack_native.image import center_crop_uint8
    _, resize_and_center_crop = _official_image_functions()
    picture = np.asarray(_random_image(*size, seed=5))
    ours = center_crop_uint8(picture, *target)
    ref = resize_and_center_crop(picture, target_width=target[1], target_height=target[0])
    assert ours.shape == ref.shape == (*target, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, ref)


def test_siglip_uint8_path_matches_the_official_app(tmp_path):
    """The app hands the processor the cropped uint8 picture (hf_clip_vision_encode), with its own do_rescale."""
    from transformers import SiglipImageProcessor

    from framepack_native.image import center_crop_uint8, siglip_pixels_uint8
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(FLUX_REDUX_PROCESSOR))
    processor = SiglipImageProcessor.from_pretrained(tmp_path)
    picture = center_crop_uint8(np.asarray(_random_image(333, 517, seed=6)), 480, 832)
    ref = processor.preprocess(images=picture, return_tensors="pt").pixel_values
    ours = siglip_pixels_uint8(picture, SiglipProcessorConfig.from_pretrained(tmp_path))
    assert ours.shape == ref.shape == (1, 3, 384, 384)
    assert (ours - ref).abs().max().item() < BOUND
    # diffusers' float path truncates the [0, 1] floats back to uint8: not the same input (the reason for the preset)
    pixels = torch.from_numpy(picture).float().permute(2, 0, 1)[None] / 127.5 - 1
    assert (siglip_pixels(pixels) - ref).abs().max().item() > 1e-3
