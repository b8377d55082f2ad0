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
        (plain, plain_split, _), (cfg, cfg_split, _) = calls["sequence"], calls["cfg"]
        cached, cached_split, ran = calls["teacache"]  # 6 steps a section: TeaCache skipped blocks, on every rank
        assert cached == cached_split == 3 * plain and 0 < ran < cached
        assert plain_split == plain > 0  # without guidance every call is split over all the ranks
        if result["cfg_parallel"]:  # each rank ran one branch per step, split over its half unless it is one rank
            assert cfg == plain and cfg_split == (cfg if ranks > 2 else 0)
        else:  # both branches in turn, each split over all the ranks
            assert cfg == cfg_split == 2 * plain


def test_from_pretrained_picks_the_group_up(reference_store, tmp_path):
    from tests.reference.pipeline import build_pipeline
    from weights_convert import convert
    src = reference_store.get("pipeline_tiny", lambda p: build_pipeline(p, layout="pipeline"))
    model = convert(src, tmp_path / "model")
    said = torchrun("load_worker.py", 2, tmp_path / "out.json", str(model))
    assert said == {"picked": True, "world": 2, "alone": True}


def test_cli_under_torchrun_writes_the_one_process_video(tmp_path):
    from framepack_native.cli import main
    from framepack_native.video import read_video
    args = ["generate", "--demo", "--num-frames", "9", "--window", "2", "--steps", "2", "--height", "32", "--width",
            "48", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one.mp4")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "framepack_native", *args, "--out", str(tmp_path / "two.mp4")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 only
    two, one = read_video(tmp_path / "two.mp4").astype(float), read_video(tmp_path / "one.mp4").astype(float)
    # the frames agree to ~1e-7 (test_demo_pipeline_frames_equal_one_process), but one uint8 rounding that flips
    # changes the encoder's choices: the mp4s are compared loosely (measured: mean 1.3 / 255 when they differ)
    assert two.shape == one.shape == (17, 32, 48, 3) and one.std() > 10 and abs(two - one).mean() < 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.mp4", "two.mp4"]  # no state folder, no temporaries


def test_cli_refuses_ranks_that_disagree(tmp_path):
    import socket
    with socket.socket() as s:  # a free port for the two ranks' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    procs = [subprocess.Popen([sys.executable, "-m", "framepack_native", "generate", "--demo", "--seed", seed,
                               "--device", "cpu", "--out", str(tmp_path / "out.mp4")], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)))
             for rank, seed in ((0, "1"), (1, "2"))]  # as torchrun starts them, but with different seeds
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    for out, err in outputs:
        lines = err.strip().splitlines()
        assert not out and len(lines) == 1 and "rank 1 was started with a different 'seed'" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_magcache_calibration_is_refused_on_several_ranks():
    from framepack_native.caches import MagCacheConfig
    from framepack_native.demo import demo_image, demo_pipeline
    pipe = demo_pipeline()
    pipe.parallel = object()  # as enable_parallel leaves it on several ranks (no group needed to refuse)
    with pytest.raises(ValueError, match="calibration must see every transformer call"):
        pipe(demo_image(), "waves", cache=MagCacheConfig(calibrate=True), num_frames=9, latent_window_size=2)
