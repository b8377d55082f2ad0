"""The CPU benchmark scripts still run, at toy sizes, and what they print of parity holds (no timing is checked).

Each runs as a user runs it (`python benchmarks/NAME.py ...`, a fresh process). Left out: encoders.py (real
widths, ~30 s), convert.py (writes GBs), gpu_check.py (minutes in the interpreter; its pieces are these scripts).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script, *args, env=None):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, **(env or {})), timeout=300)
    assert proc.returncode == 0, f"{script} exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def numbers(pattern, text):
    found = [float(x) for x in re.findall(pattern, text)]
    assert found, f"no {pattern!r} in:\n{text}"
    return found


def test_transformer():
    out = run("transformer.py", "--blocks", "1", "1", "--window", "2", "--height", "8", "--width", "8", "--runs", "1")
    assert max(numbers(r"rel\. L2 vs diffusers ([\d.e+-]+)", out)) < 1e-4
    assert numbers(r"ratio diffusers / ours \(auto\): ([\d.]+)x", out)


def test_vae():
    out = run("vae.py", "--config", "tiny", "--frames", "5", "--height", "16", "--width", "16", "--runs", "1")
    assert numbers(r"output rel\. L2 ours vs diffusers: ([\d.e+-]+)", out)[0] < 1e-4


def test_pipeline():
    out = run("pipeline.py", "--sections", "2", "--steps", "1", "--window", "2")
    assert numbers(r"median ratio diffusers/ours: ([\d.]+)", out)


def test_precision():
    """Three variants per timestep; the bf16 ones near the float32 forward (toy widths)."""
    out = run("precision.py", "--heads", "1", "--height", "4", "--width", "4", "--timesteps", "500")
    errors = numbers(r"500 (?:bf16 \+ fp32 final Linear|bf16) +([\d.e+-]+)", out)
    assert len(errors) == 2 and max(errors) < 5e-2, out


def test_long_video():
    out = run("long_video.py", "--seconds", "0.5", "1.5", "--window", "2", "--steps", "1", "--height", "32", "--width",
              "48")
    rows = re.findall(r"^ *([\d.]+) +(\d+) +[\d.]+ ", out, flags=re.M)
    assert [(float(s), int(n)) for s, n in rows] == [(0.5, 2), (1.5, 6)], out  # round(s * 30 / 8) sections


def test_lora():
    out = run("lora.py", "--tiny", "--threads", "1")
    assert "unload restores every bit: True" in out, out


def test_caches():
    out = run("caches.py", "--steps", "3", "--seconds", "1", "--repeats", "1")
    assert re.search(r"\| none \| 3 of 3 \| 0 of \d+ \|", out), out
    assert numbers(r"\| magcache 0\.1/K2/0\.25 \| [\d/]+ of 3 \| (\d+) of \d+ \|", out)[0] >= 1  # it skips


def test_load_memory():
    out = run("load_memory.py", "--gib", "0.1")
    assert out.count("PASS") == 2 and "FAIL" not in out, out


def test_fp8_memory_counted():
    out = run("fp8_memory.py", "--count-only")
    ratio, musubi = numbers(r"GiB = ([\d.]+)x", out)
    assert ratio <= 0.53 < musubi  # issue 18's goal, counted from the 13B config; musubi's layout for comparison


def test_parallel():
    out = run("parallel.py", "--ranks", "1", "2", "--runs", "1", "--heads", "2", "--head-dim", "16", "--blocks", "1",
              "1", "--latent", "4", "4", "--window", "2")
    measured = re.findall(r"^\| ([12]) \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", out, flags=re.M)
    assert measured == ["1", "2"]  # both rank counts ran
    eight = numbers(r"\| 8 \| [\d.]+ \| [\d.]+ GB \| [\d.]+ / ([\d.]+)", out)
    assert 0 < eight[0] <= 1  # the model's efficiency at 8 GPUs over NVLink


def test_real_size_tiny():
    out = run("real_size.py", "--tiny", "--runs", "1", "--device", "cpu")
    assert numbers(r"streamed \(auto\) vs resident \(auto\) output, rel\. L2: ([\d.e+-]+)", out)[0] == 0.0
    line = re.search(r"text encoding streamed vs whole, rel\. L2 \(Llama, CLIP pooled\): (.*)", out)
    assert line and numbers(r"([\d.e+-]+)", line[1]) == [0.0, 0.0], out


@pytest.mark.parametrize("script, args", [("attention.py", ["--lengths", "64", "100"]),
                                          ("rope.py", ["--lengths", "300", "--no-compile"])])
def test_kernel_benchmarks_on_the_cpu(script, args):
    out = run(script, "--device", "cpu", "--dtype", "fp32", "--heads", "2", "--head-dim", "32", "--runs", "1",
              "--inner", "1", *args)
    assert "CPU" in out.splitlines()[0]


def test_attention_variants_in_the_interpreter():
    out = run("attention_variants.py", "--smoke", env={"TRITON_INTERPRET": "1"})
    assert max(numbers(r"rel\. L2 ([\d.e+-]+)", out)) < 1e-3
