"""Progressive output (issue 14): the CLI replaces --out after every finished section with a playable mp4 of all of
them, so a stop keeps the finished sections; --preview writes the latest step's preview."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

from framepack_native.video import read_video

ROOT = Path(__file__).resolve().parent.parent
DEMO = [sys.executable, "-m", "framepack_native.cli", "generate", "--demo", "--device", "cpu", "--window", "2",
        "--steps", "2"]


def test_sigint_after_finished_sections_leaves_a_playable_mp4_of_them(tmp_path):
    out = tmp_path / "o.mp4"
    proc = subprocess.Popen(DEMO + ["--num-frames", "61", "--out", str(out)], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True)  # 13 sections of 2 latents
    deadline = time.time() + 240
    while not out.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert out.exists(), "no section finished in time"
    first = read_video(out).shape[0]
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1].strip().splitlines()
    assert proc.returncode == 130, err
    frames = read_video(out)
    n = frames.shape[0]
    # inverted sampling: the first section decodes 2 latents (5 frames), each later one adds 4 x 2 frames
    assert n >= first == 5 and (n - 5) % 8 == 0 and n < 4 * 13 * 2 + 1, n
    assert err[-1] == (f"interrupted; the {n} frames of the finished sections are in {out}; run the same command "
                       f"with --resume to continue (state in {out}.state)"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4", "o.mp4.state"]  # no temporary left beside it


def test_preview_png_and_the_final_video(tmp_path):
    out, preview = tmp_path / "o.mp4", tmp_path / "p.png"
    proc = subprocess.run(DEMO + ["--num-frames", "9", "--out", str(out), "--preview", str(preview)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    picture = np.asarray(PIL.Image.open(preview))
    assert picture.shape == (64 // 8, 2 * 96 // 8, 3) and picture.dtype == np.uint8  # latent h x (window * w)
    assert read_video(out).shape[0] == 4 * 2 * 2 + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4", "p.png"]  # the finished run's state is gone
    bad = subprocess.run(DEMO + ["--out", str(out), "--preview", str(tmp_path / "p.jpg")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: --preview {tmp_path / 'p.jpg'}: the preview is a PNG; name the file .png"]
