"""framepack-native generate: the demo writes a playable mp4; a converted model generates; bad input = one line, exit 2."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from framepack_native.cli import build_parser, main
from framepack_native.video import read_video
from tests.reference.pipeline import build_pipeline
from tests.test_image import write_png
from weights_convert import convert

ROOT = Path(__file__).resolve().parent.parent


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
    return convert(src, tmp_path_factory.mktemp("cli") / "model")  # lossless: the source is float32


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


def test_out_of_gpu_memory_is_one_line_with_remedies(tmp_path, capsys, monkeypatch):
    import torch

    from framepack_native.pipeline import FramePackPipeline

    def oom(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nMore details here.")

    monkeypatch.setattr(FramePackPipeline, "__call__", oom)
    assert main(["generate", "--demo", "--vae-tiling", "--out", str(tmp_path / "v.mp4")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: CUDA out of memory. Tried to allocate 2.00 GiB.; try --offload, "
                       "a smaller --height / --width")
    assert "Traceback" not in "\n".join(err) and list(tmp_path.iterdir()) == []


def test_vae_tiling_flag_reaches_the_vae(model_dir, image_file, tmp_path, monkeypatch):
    from framepack_native.models.vae import HunyuanVideoVAE
    assert build_parser().parse_args(["generate", "--out", "x.mp4"]).vae_tiling is False
    tiled = []
    decode = HunyuanVideoVAE.decode
    monkeypatch.setattr(HunyuanVideoVAE, "decode", lambda self, z: (tiled.append(self.use_tiling), decode(self, z))[1])
    out = tmp_path / "out.mp4"
    code = main(["generate", "--model", str(model_dir), "--image", str(image_file), "--prompt", "a boat",
                 "--height", "32", "--width", "48", "--num-frames", "9", "--window", "3", "--steps", "1",
                 "--device", "cpu", "--vae-tiling", "--out", str(out)])
    assert code == 0 and read_video(out).shape == (13, 32, 48, 3)
    assert tiled and all(tiled)


def test_generate_with_teacache_skips_steps(model_dir, image_file, tmp_path, teacaches):
    """--teacache 10 (far above what these few small steps accumulate) skips all but the first and last step;
    the bare flag means the official app's 0.15."""
    assert build_parser().parse_args(["generate", "--teacache", "--out", "x.mp4"]).teacache == 0.15
    out = tmp_path / "out.mp4"
    code = main(["generate", "--model", str(model_dir), "--image", str(image_file), "--prompt", "a boat",
                 "--height", "32", "--width", "48", "--num-frames", "9", "--window", "3", "--steps", "5",
                 "--device", "cpu", "--sampler", "euler", "--teacache", "10", "--out", str(out)])
    assert code == 0 and read_video(out).shape == (13, 32, 48, 3)
    used = [c for c in teacaches if c.previous is not None]  # one section; the positive branch's (no CFG)
    assert len(used) == 1 and used[0].skipped == 3 and used[0].threshold == 10


BAD = {
    "size_not_16": (["--height", "40", "--width", "96"], "multiples of 16"),
    "height_without_width": (["--height", "640"], "give both height and width or neither (the resolution bucket)"),
    "unknown_preset": (["--preset", "comfy"], "argument --preset: invalid choice: 'comfy'"),
    "unknown_sampling": (["--sampling", "sideways"], "unknown sampling type 'sideways'"),
    "unknown_sampler": (["--sampler", "ddim"], "unknown sampler 'ddim'"),
    "last_image_vanilla": (["--sampling", "vanilla", "--last-image", "IMAGE"], "last_image needs sampling_type"),
    "zero_frames": (["--num-frames", "0"], "--num-frames must be between 1 and 3600, got 0"),
    "zero_steps": (["--steps", "0"], "--steps must be between 1 and 1000, got 0"),
    "unreadable_image": (["--image", "NOTIMAGE"], "cannot read image"),
    "missing_image": (["--image", "MISSING"], "cannot read image"),
    "missing_model": (["--model", "MISSING"], "no such folder"),
    "incomplete_model": (["--model", "EMPTYDIR"], "manifest.json: missing"),
    "unwritable_output": (["--out", "NOFOLDER"], "does not exist or is not writable"),
    "infinite_seconds": (["--seconds", "inf"], "argument --seconds: expected a finite number, got 'inf'"),
    "huge_seconds": (["--seconds", "1e308"], "--seconds must be between 0.0333333 and 120, got 1e+308"),
    "huge_frames": (["--num-frames", "99999999999999999999999"], "--num-frames must be between 1 and 3600"),
    "huge_window": (["--window", "99999999999999999999"], "--window must be between 1 and 33"),
    "huge_steps": (["--steps", "99999999999"], "--steps must be between 1 and 1000"),
    "huge_width": (["--width", "99999999999999999999984"], "--width must be between 16 and 4096"),
    "bad_crf": (["--crf", "-50"], "--crf must be between 0 and 51, got -50"),
    "huge_seed": (["--seed", "99999999999999999999999"],
                  "--seed must be between -9223372036854775808 and 18446744073709551615"),
    "nan_guidance": (["--guidance", "nan"], "argument --guidance: expected a finite number, got 'nan'"),
    "nan_cfg": (["--cfg", "nan"], "argument --cfg: expected a finite number, got 'nan'"),
    "negative_teacache": (["--teacache", "-1"], "--teacache must be between 0 and 10, got -1"),
    "nan_teacache": (["--teacache", "nan"], "argument --teacache: expected a finite number, got 'nan'"),
    "bad_device": (["--device", "toaster"], "--device 'toaster': not a device"),
    "mps_device": (["--device", "mps"], "--device 'mps': not a device this runs on (cpu, cuda or cuda:N)"),
    "meta_device": (["--device", "meta"], "--device 'meta': not a device this runs on"),
    "bomb_image": (["--image", "BOMB"], "bomb.png: cannot read image (Image size (900000000 pixels)"),
    "float_image": (["--image", "FLOAT"], "float.tiff: cannot read image (mode F (32-bit float pixels)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2(case, tmp_path, image_file, capsys):
    extra, message = BAD[case]
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_an_image.png").write_text("hello")
    PIL.Image.fromarray(np.full((4, 6), 0.5, dtype=np.float32)).save(tmp_path / "float.tiff")
    subs = {"IMAGE": str(image_file), "NOTIMAGE": str(tmp_path / "not_an_image.png"),
            "MISSING": str(tmp_path / "missing"), "EMPTYDIR": str(tmp_path / "empty"),
            "NOFOLDER": str(tmp_path / "no" / "out.mp4"), "FLOAT": str(tmp_path / "float.tiff"),
            "BOMB": str(write_png(tmp_path / "bomb.png", None, 30000, 30000))}
    extra = [subs.get(a, a) for a in extra]
    out = tmp_path / "out.mp4"
    base = {"--model": str(tmp_path / "empty"), "--image": str(image_file), "--prompt": "x", "--out": str(out),
            "--device": "cpu"}
    for flag, value in zip(extra[::2], extra[1::2]):
        base[flag] = value
    if case not in ("missing_model", "incomplete_model", "height_without_width"):  # the demo fills in its own size
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


def test_cuda_index_checked_against_the_devices(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    out = tmp_path / "x.mp4"
    assert main(["generate", "--demo", "--device", "cuda:2", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "error: --device cuda:2: this machine has 2 CUDA device(s), cuda:0..cuda:1\n"
    assert list(tmp_path.iterdir()) == []


TERMINATE_WHILE_ENCODING = """
import os, signal, sys
import av
from framepack_native.cli import main
encode = av.VideoFrame.from_ndarray
def terminate_on_second_frame(*args, calls=[], **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return encode(*args, **kwargs)
av.VideoFrame.from_ndarray = terminate_on_second_frame
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_encoding_leaves_nothing(tmp_path):
    """SIGTERM takes Ctrl-C's way out: the temporary mp4 is removed, one line, exit 143."""
    proc = subprocess.run([sys.executable, "-c", TERMINATE_WHILE_ENCODING, "generate", "--demo", "--device", "cpu",
                           "--height", "32", "--width", "48", "--num-frames", "9", "--window", "3", "--steps", "1",
                           "--out", str(tmp_path / "x.mp4")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    # the finished section is kept in the run's state, not in a video: --resume writes it without running again
    assert proc.stderr.splitlines()[-1] == (f"terminated; no video written; run the same command with --resume to "
                                            f"continue (state in {tmp_path / 'x.mp4.state'})")
    assert "Traceback" not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["x.mp4.state"]  # no video, no temporary
