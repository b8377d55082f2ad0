"""framepack-native generate under the adversarial audit's inputs (issue 22): odd outputs, hostile images, prompts that
are not text, numbers that overflow, models that go NaN, checks that must come before any model loads.

Bad input: exit 2 and one line on stderr, no traceback, nothing written; a run that goes wrong: exit 1, one line,
and the finished sections kept. Each command runs in a fresh process as a user runs it, unless it needs a
monkeypatch inside the process (then `main` in this one).
"""
import io
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from framepack_native.cli import main
from framepack_native.video import read_video

ROOT = Path(__file__).resolve().parent.parent


def generate(*args, timeout=120):
    """framepack-native generate --demo ARGS in a fresh process: (exit code, stderr lines)."""
    cmd = [os.fsencode(sys.executable), b"-m", b"framepack_native.cli", b"generate", b"--demo", b"--device", b"cpu",
           *[a if isinstance(a, bytes) else os.fsencode(str(a)) for a in args]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=timeout)
    return proc.returncode, proc.stderr.decode("utf-8", "replace").strip().splitlines()


def one_error(code, lines, message):
    assert code == 2, (code, lines)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "in.png"
    PIL.Image.fromarray((np.random.RandomState(0).rand(40, 60, 3) * 255).astype(np.uint8)).save(path)
    return path


def test_out_device_fifo_or_symlink_is_refused_and_left_alone(tmp_path, picture):
    # never /dev/null itself: a regression run as root would replace the machine's /dev/null with an mp4
    try:
        device = tmp_path / "null.mp4"
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers, under our own name
    except PermissionError:
        device = None  # not root: the FIFO below is the case a user can make
    if device is not None:
        one_error(*generate("--image", picture, "--out", device), "is not a regular file (a device, FIFO or socket)")
        assert device.is_char_device()
    one_error(*generate("--image", picture, "--out", tmp_path / "null"), "the video is H.264 in an mp4 container")
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    one_error(*generate("--image", picture, "--out", fifo), "is not a regular file (a device, FIFO or socket)")
    assert fifo.is_fifo()
    target = tmp_path / "target.mp4"
    target.write_bytes(b"mine")
    link = tmp_path / "link.mp4"
    link.symlink_to(target)
    one_error(*generate("--image", picture, "--out", link), "is a symbolic link")
    assert link.is_symlink() and target.read_bytes() == b"mine"


def test_out_must_be_mp4_and_not_the_input(tmp_path):
    one_error(*generate("--out", tmp_path / "video.avi"), "name the file .mp4")
    one_error(*generate("--out", tmp_path / "frame.png"), "name the file .mp4")
    disguised = tmp_path / "picture.mp4"  # a PNG under an mp4 name, given as both input and output
    PIL.Image.new("RGB", (64, 48), (200, 10, 10)).save(disguised, format="PNG")
    before = disguised.read_bytes()
    one_error(*generate("--image", disguised, "--out", disguised), "is the input image")
    assert disguised.read_bytes() == before


def test_out_name_too_long_for_its_temporary_fails_before_generating(tmp_path, picture):
    name = "v" * (255 - len(".mp4")) + ".mp4"  # a legal name; its temporary ".NAME.XXXXXXXX.tmp" is not
    start = time.perf_counter()
    code, lines = generate("--image", picture, "--out", tmp_path / name)
    one_error(code, lines, "cannot create a file beside it (File name too long)")
    assert time.perf_counter() - start < 60 and list(tmp_path.iterdir()) == [picture]


def test_images_that_are_not_files_or_not_images(tmp_path):
    fifo = tmp_path / "in.png"
    os.mkfifo(fifo)
    one_error(*generate("--image", fifo, "--out", tmp_path / "o.mp4", timeout=60), "not a regular file")
    # a DDS with an unknown pixel format, named .png: Pillow raises NotImplementedError
    buf = io.BytesIO()
    PIL.Image.new("RGB", (60, 40), (1, 2, 3)).save(buf, "DDS")
    dds = bytearray(buf.getvalue())
    dds[80] = 0  # DDPIXELFORMAT flags
    (tmp_path / "dds.png").write_bytes(bytes(dds))
    one_error(*generate("--image", tmp_path / "dds.png", "--out", tmp_path / "o.mp4"),
              "cannot read image (NotImplementedError: Unknown pixel format flags 0)")
    # a PNG whose image data is cut short: decoded at once, not later in the pipeline
    good = io.BytesIO()
    PIL.Image.fromarray((np.random.RandomState(1).rand(40, 60, 3) * 255).astype(np.uint8)).save(good, "PNG")
    data = good.getvalue()
    idat = data.index(b"IDAT")
    (tmp_path / "cut.png").write_bytes(data[:idat + 60] + data[-12:])
    one_error(*generate("--image", tmp_path / "cut.png", "--out", tmp_path / "o.mp4"), "cut.png: cannot read image")
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".o.mp4*"))


def test_prompt_that_is_not_utf8(tmp_path):
    one_error(*generate("--prompt", b"caf\xe9 au lait", "--out", tmp_path / "o.mp4"), "prompt is not valid UTF-8")
    one_error(*generate("--negative-prompt", b"\xff", "--out", tmp_path / "o.mp4"),
              "negative_prompt is not valid UTF-8")


def test_guidance_that_overflows_the_dtype(tmp_path):
    one_error(*generate("--guidance", "1e30", "--out", tmp_path / "o.mp4"), "--guidance must be between 0 and 100")
    one_error(*generate("--cfg", "1e30", "--out", tmp_path / "o.mp4"), "--cfg must be between 0 and 100")
    from framepack_native.demo import demo_image, demo_pipeline
    pipe = demo_pipeline()
    pipe.transformer.half()
    with pytest.raises(ValueError, match=r"guidance_scale 70 x 1000 overflows the transformer's torch.float16 "
                                         r"\(at most 65.504\)"):
        pipe(demo_image(), "x", guidance_scale=70.0, height=64, width=96, num_frames=1)


def test_nan_stops_the_run_naming_the_section_and_keeps_the_finished_ones(tmp_path, capsys, monkeypatch):
    """A transformer that goes NaN in section 2 of 3: exit 1, one line naming section and step, section 1 written."""
    from framepack_native import demo
    real = demo.demo_pipeline

    def poisoned(**kw):
        pipe = real(**kw)
        forward, calls = pipe.transformer.forward, []

        def nan_in_second_section(*args, **kwargs):
            calls.append(1)
            out = forward(*args, **kwargs)
            return out * float("nan") if len(calls) == 4 + 3 else out  # section 2's step 3 (one call a step)
        pipe.transformer.forward = nan_in_second_section
        return pipe

    monkeypatch.setattr(demo, "demo_pipeline", poisoned)
    out = tmp_path / "o.mp4"
    code = main(["generate", "--demo", "--device", "cpu", "--num-frames", "13", "--window", "2", "--steps", "4",
                 "--sampler", "euler", "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1, lines
    assert "non-finite latents at section 2/3, step 3/4" in errors[0] and str(out) in errors[0], errors
    # section 1 (inverted: the video's end) decoded to 2 latent frames -> 5 frames
    assert read_video(out).shape[0] == 5


def test_host_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    from framepack_native import demo

    def no_memory(**kw):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 99999999999 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(demo, "demo_pipeline", no_memory)
    assert main(["generate", "--demo", "--device", "cpu", "--out", str(tmp_path / "o.mp4")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[1:] == ["error: out of host memory (RAM); close other programs, or try a smaller --height / --width"]
    assert "RANDOM weights" in lines[0]  # the demo's own notice


@pytest.fixture(scope="module")
def model_dir(reference_store, tmp_path_factory):
    from tests.reference.pipeline import build_pipeline
    from weights_convert import convert
    src = reference_store.get("pipeline_tiny", lambda p: build_pipeline(p, layout="pipeline"))
    return convert(src, tmp_path_factory.mktemp("hardening") / "model")


def copy_model(model_dir, dst):
    import shutil
    shutil.copytree(model_dir, dst)
    return dst


def test_last_image_with_a_vanilla_model_is_refused_before_loading(model_dir, tmp_path, picture):
    model = copy_model(model_dir, tmp_path / "f1")
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["sampling_type"] = "vanilla"
    (model / "manifest.json").write_text(json.dumps(manifest))
    weights = model / manifest["components"]["transformer"]["path"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # were anything loaded, this would be the error
    proc = subprocess.run([sys.executable, "-m", "framepack_native.cli", "generate", "--model", str(model), "--image",
                           str(picture), "--last-image", str(picture), "--prompt", "x", "--device", "cpu",
                           "--out", str(tmp_path / "o.mp4")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    one_error(proc.returncode, proc.stderr.strip().splitlines(), "last_image needs sampling_type")


def test_a_truncated_last_component_fails_before_any_weights_load(model_dir, tmp_path, monkeypatch):
    from framepack_native import FramePackPipeline
    from framepack_native.models import loading
    from framepack_native.weights import CheckpointError
    model = copy_model(model_dir, tmp_path / "m")
    manifest = json.loads((model / "manifest.json").read_text())
    folder = model / manifest["components"]["image_encoder"]["path"]
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])
    loaded = []
    real = loading.load_state

    def record(model_, *args, **kwargs):
        loaded.append(type(model_).__name__)
        return real(model_, *args, **kwargs)

    monkeypatch.setattr(loading, "load_state", record)
    with pytest.raises(CheckpointError, match=f"{weights.name}.*truncated"):
        FramePackPipeline.from_pretrained(model, device="cpu")
    assert loaded == []


def test_long_prompt_warns_in_one_line(model_dir, tmp_path, picture):
    out = tmp_path / "o.mp4"
    proc = subprocess.run([sys.executable, "-m", "framepack_native.cli", "generate", "--model", str(model_dir),
                           "--image", str(picture), "--prompt", "waves " * 300, "--height", "32", "--width", "48",
                           "--num-frames", "1", "--window", "1", "--steps", "1", "--device", "cpu", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    warnings = [line for line in lines if "warning" in line.lower()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: the prompt is "), lines
    assert "only the first 256 condition the video" in warnings[0]
    assert out.is_file()
    short = subprocess.run([sys.executable, "-m", "framepack_native.cli", "generate", "--model", str(model_dir),
                            "--image", str(picture), "--prompt", "waves", "--height", "32", "--width", "48",
                            "--num-frames", "1", "--window", "1", "--steps", "1", "--device", "cpu", "--out",
                            str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert short.returncode == 0 and "warning" not in short.stderr.lower(), short.stderr
