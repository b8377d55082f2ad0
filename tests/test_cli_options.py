"""The CLI's --lora and --cache options with the demo model, in a subprocess: a LoRA is merged into the run (its
frames are the Python API's with pipe.load_lora), bad LoRA files and option mixes are one line with exit 2 and no
output, MagCache runs, and --magcache-calibrate prints one ratio per step as JSON."""
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from framepack_native.demo import DEMO_PROMPT, demo_image, demo_pipeline
from tests.reference import lora as ref_lora

ROOT = Path(__file__).resolve().parent.parent
STEPS = 3
ARGS = ["generate", "--demo", "--device", "cpu", "--window", "2", "--steps", str(STEPS), "--num-frames", "5",
        "--seed", "31337"]
# keeps the frames the CLI hands to the encoder (FILE.frames.npy): libx264 may not encode them to the same bytes
WRAPPER = """
import sys
import numpy as np
import framepack_native.video as video
write = video.write_mp4
def write_mp4(path, frames, **kw):
    write(path, frames, **kw)
    np.save(str(path) + ".frames.npy", video.to_uint8_frames(frames))
video.write_mp4 = write_mp4
from framepack_native.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli(args):
    return subprocess.run([sys.executable, "-c", WRAPPER, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def error_line(proc):
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("framepack-native demo:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    pipe = demo_pipeline(seed=31337)
    shapes = ref_lora.module_shapes(ref_lora.diffusers_kwargs(pipe.transformer.config))
    return ref_lora.save(tmp_path_factory.mktemp("lora") / "demo.safetensors",
                         ref_lora.random_peft(shapes, seed=13, magnitude=0.3))


def test_lora_is_merged_into_the_run(tmp_path, lora_file):
    out = tmp_path / "o.mp4"
    proc = cli(ARGS + ["--out", str(out), "--lora", f"{lora_file}:0.7"])
    assert proc.returncode == 0, proc.stderr
    pipe = demo_pipeline(seed=31337)
    kw = dict(height=64, width=96, num_frames=5, latent_window_size=2, num_inference_steps=STEPS, output_type="uint8")
    plain = pipe(demo_image(), DEMO_PROMPT, generator=torch.Generator().manual_seed(31337), **kw)
    pipe.load_lora(lora_file, 0.7)
    expected = pipe(demo_image(), DEMO_PROMPT, generator=torch.Generator().manual_seed(31337), **kw)
    assert not torch.equal(plain, expected)
    got = np.load(f"{out}.frames.npy")
    assert np.array_equal(got, expected[0].permute(0, 2, 3, 1).numpy())


def test_bad_lora_files_are_one_line(tmp_path, lora_file):
    out = tmp_path / "o.mp4"
    (tmp_path / "x.pt").write_bytes(pickle.dumps({"lora_unet_x.lora_down.weight": [1.0]}))
    (tmp_path / "cut.safetensors").write_bytes(Path(lora_file).read_bytes()[:100])
    ref_lora.save(tmp_path / "unknown.safetensors", {"lora_unet_no_such_module.lora_down.weight": torch.ones(2, 4),
                                                     "lora_unet_no_such_module.lora_up.weight": torch.ones(4, 2)})
    cases = {str(tmp_path / "missing.safetensors"): "missing.safetensors",
             str(tmp_path / "unknown.safetensors"): "lora_unet_no_such_module",  # found when the model is there
             str(tmp_path / "x.pt"): "x.pt",
             str(tmp_path / "cut.safetensors"): "cut.safetensors",
             f"{lora_file}:nan": "no such file"}  # only a trailing decimal number is a strength
    for arg, named in cases.items():
        line = error_line(cli(ARGS + ["--out", str(out), "--lora", arg]))
        assert line.startswith("error: ") and named in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.safetensors", "unknown.safetensors", "x.pt"]


def test_magcache_runs_and_calibration_prints_the_ratios(tmp_path):
    out = tmp_path / "o.mp4"
    exact = cli(ARGS + ["--out", str(tmp_path / "exact.mp4")])
    assert exact.returncode == 0, exact.stderr
    calibrated = cli(ARGS + ["--out", str(out), "--magcache-calibrate"])
    assert calibrated.returncode == 0, calibrated.stderr
    ratios = json.loads(calibrated.stdout.strip().splitlines()[-1])
    assert len(ratios) == STEPS and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    # calibration runs every step exactly: the frames of the run without a cache
    assert np.array_equal(np.load(f"{out}.frames.npy"), np.load(tmp_path / "exact.mp4.frames.npy"))
    ratios_file = tmp_path / "ratios.json"
    ratios_file.write_text(json.dumps([1.0] * STEPS))  # ratios of 1: every step past the retained ones is skipped
    skipping = cli(ARGS + ["--out", str(out), "--cache", "magcache", "--magcache-ratios", str(ratios_file),
                           "--magcache-retention", "0", "--cache-threshold", "0.5"])
    assert skipping.returncode == 0, skipping.stderr
    assert not np.array_equal(np.load(f"{out}.frames.npy"), np.load(tmp_path / "exact.mp4.frames.npy"))


@pytest.mark.parametrize("extra, named", [
    (["--teacache", "--cache", "magcache"], "--teacache"),
    (["--magcache-k", "3"], "--cache magcache"),
    (["--cache", "magcache", "--magcache-ratios", "no-such.json"], "no-such.json"),
])
def test_cache_option_mixes_are_one_line(tmp_path, extra, named):
    line = error_line(cli(ARGS + ["--out", str(tmp_path / "o.mp4"), *extra]))
    assert named in line, line
    assert list(tmp_path.iterdir()) == []
