"""The one cache option (framepack_native.caches): configs, resolve_cache, the CLI helpers and the ratios file."""
import argparse
import json
import math
import os
import re
import subprocess
import sys

import pytest

from framepack_native.caches import (MagCacheConfig, TeaCacheConfig, add_cache_arguments, cache_from_args,
                                     read_ratios_file, resolve_cache)
from framepack_native.magcache_ratios import TABLES


def test_resolve_cache():
    assert resolve_cache() is None
    assert resolve_cache("teacache") == TeaCacheConfig(0.15)
    assert resolve_cache("magcache") == MagCacheConfig(0.1, 2, 0.25)
    assert resolve_cache(teacache=0.3) == TeaCacheConfig(0.3)
    assert resolve_cache(teacache=0) == TeaCacheConfig(0.0)
    config = MagCacheConfig(threshold=0.2)
    assert resolve_cache(config) is config
    with pytest.raises(ValueError, match="pass cache= or teacache= .*not both"):
        resolve_cache("magcache", teacache=0.15)
    with pytest.raises(ValueError, match=r"unknown cache 'MagCache'; expected None, one of \('teacache', 'magcache'\)"):
        resolve_cache("MagCache")
    with pytest.raises(ValueError, match="unknown cache 0.1"):
        resolve_cache(0.1)
    for bad in (True, -1, math.nan, math.inf, "0.1"):
        with pytest.raises(ValueError, match="teacache must be a threshold >= 0"):
            resolve_cache(teacache=bad)


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=-0.1), r"MagCacheConfig.threshold \(--cache-threshold\) must be a finite number >= 0, got -0.1"),
    (dict(threshold=math.nan), r"MagCacheConfig.threshold .* got nan"),
    (dict(threshold=math.inf), r"MagCacheConfig.threshold .* got inf"),
    (dict(max_skips=-1), r"MagCacheConfig.max_skips \(--magcache-k\) must be an integer >= 0, got -1"),
    (dict(max_skips=2.0), r"max_skips .* an integer >= 0, got 2.0"),
    (dict(max_skips=True), r"max_skips .* got True"),
    (dict(retention=1.5), r"MagCacheConfig.retention \(--magcache-retention\) must be a finite number in \[0, 1\]"),
    (dict(calibrate=1), r"calibrate \(--magcache-calibrate\) is True or False, got 1"),
    (dict(ratios=[1.0, 0.0]), r"ratios \(--magcache-ratios\)\[1\] must be a finite number > 0, got 0.0"),
    (dict(ratios=[1.0, math.nan]), r"\[1\] must be a finite number > 0, got nan"),
    (dict(ratios=[1.0, "1.1"]), r"\[1\] must be a finite number > 0, got 1.1"),
    (dict(ratios=[]), r"must hold 1 to 10000 numbers, got 0"),
    (dict(ratios="1.0"), r"must be a list of numbers, got str"),
    (dict(ratios=[1.0], calibrate=True), r"calibrate measures the ratios; do not pass ratios with it"),
])
def test_magcache_config_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MagCacheConfig(**kwargs)


def test_configs():
    with pytest.raises(ValueError, match=r"TeaCacheConfig.threshold \(--cache-threshold\) .* got -1"):
        TeaCacheConfig(-1)
    config = MagCacheConfig(ratios=[1, 1.01, 0.99])
    assert config.ratios == (1.0, 1.01, 0.99) and hash(config) == hash(MagCacheConfig(ratios=(1.0, 1.01, 0.99)))
    state = config.start(5)  # one's own ratios need no frame size; resampled to the step count by nearest index
    assert state.ratios == (1.0, 1.0, 1.01, 0.99, 0.99) and state.num_steps == 5
    fresh = MagCacheConfig()
    inv = fresh.start(25, sampling_type="inverted_anti_drifting", height=640, width=640)
    van = fresh.start(25, sampling_type="vanilla", height=640, width=640)
    assert inv.ratios == TABLES["inverted_anti_drifting"][640][25] and van.ratios == TABLES["vanilla"][640][25]
    assert inv is not van and inv.residual is None and inv.step == 0
    with pytest.raises(ValueError, match="height must be a number of pixels > 0, got None"):
        fresh.start(25, sampling_type="vanilla")
    with pytest.raises(ValueError, match="published ratios for sampling types"):
        fresh.start(25, sampling_type="F1", height=640, width=640)
    for cfg in (fresh, TeaCacheConfig()):
        with pytest.raises(ValueError, match="num_steps >= 1 sampling steps, got 0"):
            cfg.start(0, sampling_type="vanilla", height=64, width=64)
    tea = TeaCacheConfig(0.2).start(7, sampling_type="vanilla", height=64, width=64)
    assert (tea.num_steps, tea.threshold, tea.skipped, tea.computed) == (7, 0.2, 0, 0)
    with pytest.raises(ValueError, match=r"calibrated_ratios\(\) needs MagCacheConfig\(calibrate=True\)"):
        fresh.calibrated_ratios()


def test_calibrated_ratios_average_finished_runs():
    config = MagCacheConfig(calibrate=True)
    a, b, c = (config.start(3) for _ in range(3))
    a.calibration.extend([0.5, 1.5])
    b.calibration.extend([1.5, 0.5])
    c.calibration.append(9.0)  # stopped after 2 of 3 steps: left out
    assert config.calibrated_ratios() == [1.0, 1.0, 1.0]
    config.start(4).calibration.extend([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"different step counts \(\[3, 4\]\)"):
        config.calibrated_ratios()


def parse(*argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacache", type=float, nargs="?", const=0.15, default=None)  # the CLI's own flag
    add_cache_arguments(parser)
    return parser.parse_args(list(argv))


def test_cache_from_args(tmp_path):
    ratios = tmp_path / "r.json"
    ratios.write_text(json.dumps([1.0, 1.02, 0.98]))
    assert cache_from_args(parse()) is None
    assert cache_from_args(parse("--teacache")) == TeaCacheConfig(0.15)
    assert cache_from_args(parse("--teacache", "0.3")) == TeaCacheConfig(0.3)
    assert cache_from_args(parse("--cache", "teacache")) == TeaCacheConfig(0.15)
    assert cache_from_args(parse("--cache", "teacache", "--cache-threshold", "0.2")) == TeaCacheConfig(0.2)
    assert cache_from_args(parse("--cache", "magcache")) == MagCacheConfig()
    assert cache_from_args(parse("--cache", "magcache", "--cache-threshold", "0.15", "--magcache-k", "4",
                                 "--magcache-retention", "0.2", "--magcache-ratios", str(ratios))) == \
        MagCacheConfig(0.15, 4, 0.2, ratios=(1.0, 1.02, 0.98))
    assert cache_from_args(parse("--magcache-calibrate")) == MagCacheConfig(calibrate=True)
    assert cache_from_args(parse("--cache", "magcache", "--magcache-calibrate")) == MagCacheConfig(calibrate=True)


@pytest.mark.parametrize("argv, message", [
    (["--teacache", "--cache", "magcache"], "--teacache THRESHOLD is the older form of --cache teacache"),
    (["--teacache", "0.1", "--cache-threshold", "0.2"], "give one of them"),
    (["--cache-threshold", "0.2"], "--cache-threshold needs --cache teacache or --cache magcache"),
    (["--magcache-k", "3"], r"--magcache-k need\(s\) --cache magcache"),
    (["--cache", "teacache", "--magcache-retention", "0.2"], r"--magcache-retention need\(s\) --cache magcache"),
    (["--cache", "teacache", "--magcache-calibrate"], "does not go with TeaCache"),
    (["--magcache-calibrate", "--magcache-k", "3"], "runs every step exactly: drop --magcache-k"),
    (["--cache", "magcache", "--magcache-k", "-1"], r"max_skips \(--magcache-k\) must be an integer >= 0, got -1"),
    (["--cache", "magcache", "--cache-threshold", "-1"], r"threshold \(--cache-threshold\) must be .* got -1.0"),
])
def test_cache_from_args_refuses(argv, message):
    with pytest.raises(ValueError, match=message):
        cache_from_args(parse(*argv))


def test_argument_types():
    with pytest.raises(SystemExit):
        parse("--cache", "fastcache")
    with pytest.raises(SystemExit):
        parse("--cache", "magcache", "--cache-threshold", "nan")


@pytest.mark.parametrize("content, message", [
    (b"[1.0, NaN]", r"not a JSON list of numbers \(NaN is not a ratio"),
    (b"[1.0, Infinity]", r"not a JSON list of numbers \(Infinity is not a ratio"),
    (b"[1.0, 1.1", "not a JSON list of numbers"),
    (b'{"ratios": [1.0]}', "expected a JSON list of numbers, got a JSON dict"),
    (b"[1.0, -1.0]", r"ratios\[1\] must be a finite number > 0, got -1.0"),
    (b"[1.0, true]", r"ratios\[1\] must be a finite number > 0, got True"),
    (b"[1.0, [1.0]]", r"ratios\[1\] must be a finite number > 0"),
    (b"[1.0, 1" + b"0" * 400 + b"]", r"ratios\[1\] must be a finite number > 0"),
    (b"[1.0, 1e999]", r"ratios\[1\] must be a finite number > 0, got inf"),
    (b"[" * 100000 + b"]" * 100000, "not a JSON list of numbers"),
    (b"[1.0, \xff]", "not UTF-8 text"),
    (b"[]", "must hold 1 to 10000 numbers, got 0"),
])
def test_bad_ratios_files(tmp_path, content, message):
    path = tmp_path / "ratios.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"^--magcache-ratios {re.escape(str(path))}: .*" + message) as e:
        read_ratios_file(path)
    assert "\n" not in str(e.value)


def test_ratios_file_that_cannot_be_read(tmp_path):
    with pytest.raises(ValueError, match="cannot read it"):
        read_ratios_file(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not a regular file"):
        read_ratios_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):  # never opened: it would block
        read_ratios_file(fifo)
    big = tmp_path / "big.json"
    big.write_bytes(b"[" + b"1.0, " * 300_000 + b"1.0]")
    with pytest.raises(ValueError, match="bytes, more than a ratios list needs"):
        read_ratios_file(big)
    good = tmp_path / "good.json"
    good.write_text(" [1, 1.5, 0.75]\n")
    assert read_ratios_file(good) == (1.0, 1.5, 0.75)


def test_caches_module_does_not_import_torch():
    code = "import sys, framepack_native.caches; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
