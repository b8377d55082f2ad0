"""Sequence parallelism (framepack_native/parallel.py) on the CPU with gloo: each case runs under torchrun in a
subprocess (tests/parallel/*_worker.py) and compares the split run with the same model in one process, float32."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5


def torchrun(worker, ranks, out, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(ranks), str(ROOT / "tests" / "parallel" / worker), str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(Path(out).read_text())


@pytest.mark.parametrize("ranks", [2, 3])
def test_transformer_output_equals_one_process(ranks, tmp_path):
    result = torchrun("transformer_worker.py", ranks, tmp_path / "out.json")
    assert result["world"] == ranks and len(result["errors"]) == ranks  # every rank's output was compared
    for errors in result["errors"]:
        tokens = errors.pop("image_tokens")
        assert any(n % ranks for n in tokens)  # the image tokens did not divide: the padding was exercised
        assert set(errors) == {"b1", "b2-text-lengths", "b2-vanilla"}
        assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_demo_pipeline_frames_equal_one_process(ranks, tmp_path):
    result = torchrun("pipeline_worker.py", ranks, tmp_path / "out.json")
    assert result["world"] == ranks and len(result["errors"]) == ranks
    assert result["cfg_parallel"] == (ranks % 2 == 0)
    for errors in result["errors"]:
        calls = errors.pop("calls")
        assert max(errors.values()) < TOL, errors
        (plain, plain_split), (cfg, cfg_split) = calls["sequence"], calls["cfg"]
        assert plain_split == plain > 0  # without guidance every call is split over all the ranks
        if result["cfg_parallel"]:  # each rank ran one branch per step, split over its half unless it is one rank
            assert cfg == plain and cfg_split == (cfg if ranks > 2 else 0)
        else:  # both branches in turn, each split over all the ranks
            assert cfg == cfg_split == 2 * plain
