"""framepack-native generate: the demo writes a playable mp4; a converted model generates; bad input = one line, exit 2."""
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from framepack_native.cli import main
from framepack_native.video import read_video
from tests.reference.pipeline import build_pipeline
from weights_convert import convert


def test_demo_writes_playable_mp4(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert main(["generate", "--demo", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "RANDOM weights" in err
    frames = read_video(out)
    # one inverted section of 9 latents + the start latent -> (10 - 1) * 4 + 1 frames, 96 x 64
    assert frames.shape == (37, 64, 96, 3)
    assert frames.std() > 1
    assert [p.name for p in tmp_path.iterdir()] == ["demo.mp4"]


@pytest.fixture(scope="module")
def model_dir(reference_store, tmp_path_factory):
    src = reference_store.get("pipeline_tiny", lambda p: build_pipeline(p, layout="pipeline"))
    return convert(src, tmp_path_factory.mktemp("cli") / "model", dtype=torch.float32)


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "in.png"
    PIL.Image.fromarray((np.random.RandomState(0).rand(40, 60, 3) * 255).astype(np.uint8)).save(path)
    return path


def test_generate_from_converted_model(model_dir, image_file, tmp_path):
    out = tmp_path / "out.mp4"
    code = main(["generate", "--model", str(model_dir), "--image", str(image_file), "--prompt", "a boat",
                 "--height", "32", "--width", "48", "--num-frames", "9", "--window", "3", "--steps", "2",
                 "--device", "cpu", "--sampler", "euler", "--out", str(out)])
    assert code == 0
    assert read_video(out).shape == (13, 32, 48, 3)


BAD = {
    "size_not_16": (["--height", "40"], "multiples of 16"),
    "unknown_sampling": (["--sampling", "sideways"], "unknown sampling type 'sideways'"),
    "unknown_sampler": (["--sampler", "ddim"], "unknown sampler 'ddim'"),
    "last_image_vanilla": (["--sampling", "vanilla", "--last-image", "IMAGE"], "last_image needs sampling_type"),
    "zero_frames": (["--num-frames", "0"], "num_frames must be >= 1"),
    "zero_steps": (["--steps", "0"], "must be >= 1"),
    "unreadable_image": (["--image", "NOTIMAGE"], "cannot read image"),
    "missing_image": (["--image", "MISSING"], "cannot read image"),
    "missing_model": (["--model", "MISSING"], "no such folder"),
    "incomplete_model": (["--model", "EMPTYDIR"], "manifest.json: missing"),
    "unwritable_output": (["--out", "NOFOLDER"], "does not exist or is not writable"),
    "infinite_seconds": (["--seconds", "inf"], "--seconds must be a positive number"),
    "bad_device": (["--device", "toaster"], "--device 'toaster': not a device"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2(case, tmp_path, image_file, capsys):
    extra, message = BAD[case]
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_an_image.png").write_text("hello")
    subs = {"IMAGE": str(image_file), "NOTIMAGE": str(tmp_path / "not_an_image.png"),
            "MISSING": str(tmp_path / "missing"), "EMPTYDIR": str(tmp_path / "empty"),
            "NOFOLDER": str(tmp_path / "no" / "out.mp4")}
    extra = [subs.get(a, a) for a in extra]
    out = tmp_path / "out.mp4"
    base = {"--model": str(tmp_path / "empty"), "--image": str(image_file), "--prompt": "x", "--out": str(out),
            "--device": "cpu"}
    for flag, value in zip(extra[::2], extra[1::2]):
        base[flag] = value
    if case not in ("missing_model", "incomplete_model"):
        base.pop("--model")
        argv = ["generate", "--demo"]
    else:
        argv = ["generate"]
    argv += [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out.exists() and not any(p.suffix == ".mp4" for p in tmp_path.rglob("*"))


def test_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "framepack_native.cli", "generate", "--demo", "--height", "40",
                           "--out", str(tmp_path / "x.mp4")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: height and width must be positive multiples of 16, "
                                                "got 40 x 96"]
