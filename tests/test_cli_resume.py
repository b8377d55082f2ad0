"""Resumable runs at the CLI (issue 14): a stop (SIGINT) or a crash inside a section leaves the finished sections'
mp4 and the run's state; `--resume` finishes the run with the frames of a run never interrupted; a resume with other
arguments is refused with one line, exit 2, and changes nothing on disk.

The stop and the crash are placed deterministically by a wrapper around the CLI in the subprocess: SIGINT sent to
itself right after the k-th mp4 of a finished section is written; a RuntimeError from the transformer's n-th call.
The wrapper also keeps the frames of the last mp4 it wrote (FRAMES.npy beside it): those are compared exactly, the
mp4 files only in length, because libx264 through PyAV does not always encode the same frames to the same bytes
(seen on this machine: two runs of the same frames, two files).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import numpy as np

from framepack_native.video import read_video

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["generate", "--demo", "--device", "cpu", "--window", "2", "--steps", "2", "--num-frames", "21"]
SECTIONS = 5  # 21 frames in sections of (2 - 1) * 4 + 1 frames: 5 sections of 2 latents, 41 frames
STEPS = 2

WRAPPER = """
import os, signal, sys
import numpy as np
import framepack_native.video as video
import framepack_native.models.transformer as transformer
from framepack_native.cli import main
mode, n = sys.argv[1], int(sys.argv[2])
calls = [0]
write = video.write_mp4
def write_mp4(path, frames, **kw):
    write(path, frames, **kw)
    np.save(str(path) + ".frames.npy", video.to_uint8_frames(frames))  # (F, H, W, 3) uint8
    if mode == "sigint":  # stop right after the n-th finished section's mp4 landed
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGINT)
video.write_mp4 = write_mp4
if mode == "crash":  # the transformer fails at its n-th call (1-based)
    forward = transformer.FramePackTransformer.forward
    def failing(self, *args, **kw):
        calls[0] += 1
        if calls[0] == n:
            raise RuntimeError("injected failure")
        return forward(self, *args, **kw)
    transformer.FramePackTransformer.forward = failing
sys.exit(main(sys.argv[3:]))
"""


def cli(args, mode="none", n=0, timeout=300):
    return subprocess.run([sys.executable, "-c", WRAPPER, mode, str(n), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The frames of the run never stopped, and the frame count after each finished section."""
    out = tmp_path_factory.mktemp("whole") / "o.mp4"
    proc = cli(ARGS + ["--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    return written(out)


def written(out):
    """The frames of the last mp4 written at `out` (F, H, W, 3) uint8, checked against the file's length."""
    frames = np.load(f"{out}.frames.npy")
    assert read_video(out).shape == frames.shape
    return frames


def frames_after(k):
    """Frames of the video after k finished sections (inverted anti-drifting): 5 for the first (2 latents decoded),
    4 * 2 more for each later one, and the last brings the start latent too: 4 more."""
    return 5 + 8 * (k - 1) + (4 if k == SECTIONS else 0)


def test_sigint_leaves_the_sections_then_resume_equals_the_whole_run(tmp_path, uninterrupted):
    out = tmp_path / "o.mp4"
    state = tmp_path / "o.mp4.state"
    proc = cli(ARGS + ["--out", str(out)], "sigint", 2)
    assert proc.returncode == 130, proc.stderr
    assert read_video(out).shape[0] == frames_after(2)
    saved = json.loads((state / "state.json").read_text())
    assert saved["done"] == 2 and saved["sections"] == SECTIONS
    assert proc.stderr.strip().splitlines()[-1] == (
        f"interrupted; the {frames_after(2)} frames of the finished sections are in {out}; run the same command with "
        f"--resume to continue (state in {state})")

    resumed = cli(ARGS + ["--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after section 2/{SECTIONS} ({frames_after(2)} frames)" in resumed.stderr
    video = written(out)
    assert video.shape[0] == uninterrupted.shape[0] == frames_after(SECTIONS)
    assert np.array_equal(video, uninterrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4", "o.mp4.frames.npy"]  # the state goes at the end


def test_a_crash_inside_a_section_keeps_the_finished_ones(tmp_path, uninterrupted):
    out = tmp_path / "o.mp4"
    proc = cli(ARGS + ["--out", str(out)], "crash", 3 * STEPS + 1)  # the first step of the 4th section
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert "RuntimeError: injected failure" in proc.stderr
    assert lines[-1] == (f"error: the run crashed (RuntimeError); the {frames_after(3)} frames of the finished "
                         f"sections are in {out}; run the same command with --resume to continue (state in "
                         f"{out}.state)")
    assert read_video(out).shape[0] == frames_after(3)
    assert json.loads((tmp_path / "o.mp4.state" / "state.json").read_text())["done"] == 3
    resumed = cli(ARGS + ["--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert np.array_equal(written(out), uninterrupted)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A folder holding a run stopped after its first section: o.mp4 and o.mp4.state."""
    folder = tmp_path_factory.mktemp("stopped")
    assert cli(ARGS + ["--out", str(folder / "o.mp4")], "sigint", 1).returncode == 130
    return folder


@pytest.mark.parametrize("change, differs", [
    (["--prompt", "another prompt"], "prompt"),
    (["--seed", "7"], "seed"),  # the demo's weights come from --seed too: both differ
    (["--height", "48", "--width", "96"], "height 64 -> 48"),
])
def test_a_resume_with_other_arguments_is_refused(tmp_path, stopped, change, differs):
    shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
    out = tmp_path / "o.mp4"
    before = snapshot(tmp_path)
    proc = cli(ARGS + ["--out", str(out), "--resume", *change])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr  # the demo's banner, then the one error line
    assert lines[-1].startswith(f"error: {out}.state: the saved run was made with other settings: ") and differs in \
        lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr
    assert snapshot(tmp_path) == before


def test_a_new_run_over_a_stopped_one_is_refused(tmp_path, stopped):
    shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
    out = tmp_path / "o.mp4"
    before = snapshot(tmp_path)
    line = cli(ARGS + ["--out", str(out)]).stderr.strip().splitlines()
    assert line == [f"error: {out}.state holds a stopped run for --out {out}: add --resume to continue it, or "
                    f"delete {out}.state to start again"]
    assert snapshot(tmp_path) == before


def test_resume_without_a_saved_run_is_one_line(tmp_path):
    out = tmp_path / "o.mp4"
    proc = cli(ARGS + ["--out", str(out), "--resume"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --resume: no saved run for --out {out} (no {out}.state/state.json)"]
    assert list(tmp_path.iterdir()) == []
