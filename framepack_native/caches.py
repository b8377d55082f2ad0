"""One cache option for the transformer's blocks: None (exact), "teacache" or "magcache", or a config with its
parameters; a config starts one per-run state for each section and guidance branch.

The per-run state is what FramePackTransformer.forward takes as `cache=`; it wraps the blocks from outside:
    state.run(blocks, img, window, probe) -> (B, Lw, D) the window's rows after every block, computed or estimated
        blocks(rows) -> (B, R, D) the blocks' outputs for the image rows `rows` (a slice); img (B, Li, D) their input;
        window: the slice of the noisy window's rows; probe() -> the first block's modulated img (B, Li, D)
    state.skipped / state.computed: steps skipped / run so far.
TeaCache: framepack_native.teacache (the official app's); MagCache: framepack_native.magcache (FramePack-Studio's
defaults). This module imports neither torch nor them at start-up (the CLI imports it before torch).
"""
import argparse
import dataclasses
import json
import math
import os
import stat
from typing import List, Optional, Tuple

CACHES = ("teacache", "magcache")
MAX_RATIOS_BYTES = 1 << 20  # a ratios file is a short JSON list; refuse anything larger before reading it
MAX_RATIOS = 10_000


def _check_number(owner, name, flag, value, low, high=math.inf, integer=False):
    """ValueError naming the field, its CLI flag and the value unless low <= value <= high (a finite number)."""
    kind = "an integer" if integer else "a finite number"
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float))) and not isinstance(value, bool)
    if not ok or not (low <= value <= high and math.isfinite(value)):
        bound = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise ValueError(f"{owner}.{name} ({flag}) must be {kind} {bound}, got {value!r}")


def check_ratios(ratios, what="MagCacheConfig.ratios (--magcache-ratios)"):
    """The ratios as a tuple of floats; ValueError unless 1..MAX_RATIOS finite numbers > 0 (ratios[0] unused)."""
    if isinstance(ratios, (str, bytes)) or not hasattr(ratios, "__len__"):
        raise ValueError(f"{what} must be a list of numbers, got {type(ratios).__name__}")
    if not 1 <= len(ratios) <= MAX_RATIOS:
        raise ValueError(f"{what} must hold 1 to {MAX_RATIOS} numbers, got {len(ratios)}")
    out = []
    for i, r in enumerate(ratios):
        try:
            f = float(r) if isinstance(r, (int, float)) and not isinstance(r, bool) else math.nan
        except OverflowError:  # an int past float's range
            f = math.inf
        if not 0 < f < math.inf:
            raise ValueError(f"{what}[{i}] must be a finite number > 0, got {str(r)[:40]}")
        out.append(f)
    return tuple(out)


def _check_start(num_steps):
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"a cache starts for num_steps >= 1 sampling steps, got {num_steps!r}")


@dataclasses.dataclass(frozen=True)
class TeaCacheConfig:
    """TeaCache (framepack_native.teacache); threshold: the official app's 0.15 (0.1: ~1.6x, 0.15: ~2.1x)."""
    threshold: float = 0.15

    def __post_init__(self):
        _check_number("TeaCacheConfig", "threshold", "--cache-threshold", self.threshold, 0)

    def start(self, num_steps, *, sampling_type=None, height=None, width=None):
        """A fresh framepack_native.teacache.TeaCache for one run of num_steps steps (the rest is unused)."""
        _check_start(num_steps)
        from framepack_native import teacache  # looked up at call time: tests may replace teacache.TeaCache
        return teacache.TeaCache(num_steps, self.threshold)


@dataclasses.dataclass(frozen=True)
class MagCacheConfig:
    """MagCache (framepack_native.magcache) with FramePack-Studio's defaults: threshold 0.1 on the accumulated
    error, at most max_skips (K) steps skipped in a row, the first int(retention * steps) steps always run.

    ratios: None, the published tables (by sampling type, resolution and step count), or one's own sequence
    (resampled to the run's step count by nearest index as MagCache4FramePack does). calibrate: never skip and
    record each run's ratios; calibrated_ratios() returns their mean.
    """
    threshold: float = 0.1
    max_skips: int = 2
    retention: float = 0.25
    ratios: Optional[Tuple[float, ...]] = None
    calibrate: bool = False
    _runs: List[Tuple[int, List[float]]] = dataclasses.field(default_factory=list, init=False, repr=False,
                                                             compare=False)  # (steps, ratios) per calibration run

    def __post_init__(self):
        _check_number("MagCacheConfig", "threshold", "--cache-threshold", self.threshold, 0)
        _check_number("MagCacheConfig", "max_skips", "--magcache-k", self.max_skips, 0, integer=True)
        _check_number("MagCacheConfig", "retention", "--magcache-retention", self.retention, 0, 1)
        if not isinstance(self.calibrate, bool):
            raise ValueError(f"MagCacheConfig.calibrate (--magcache-calibrate) is True or False, got "
                             f"{self.calibrate!r}")
        if self.ratios is not None:
            if self.calibrate:
                raise ValueError("MagCacheConfig: calibrate measures the ratios; do not pass ratios with it")
            object.__setattr__(self, "ratios", check_ratios(self.ratios))

    def start(self, num_steps, *, sampling_type=None, height=None, width=None):
        """A fresh framepack_native.magcache.MagCache for one run: sampling_type ("inverted_anti_drifting" |
        "vanilla") and height / width (pixels) choose the published ratios when ratios is None."""
        _check_start(num_steps)
        from framepack_native.magcache import MagCache, nearest_interp, published_ratios, skip_schedule
        if self.calibrate:
            record = []
            self._runs.append((num_steps, record))
            return MagCache((False,) * num_steps, calibration=record)
        if self.ratios is not None:
            ratios = self.ratios if len(self.ratios) == num_steps else nearest_interp(self.ratios, num_steps)
        else:
            for name, value in (("height", height), ("width", width)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                    raise ValueError(f"MagCache chooses its published ratios by the frame size: {name} must be a "
                                     f"number of pixels > 0, got {value!r}")
            ratios = published_ratios(sampling_type, height, width, num_steps)
        return MagCache(skip_schedule(ratios, self.threshold, self.max_skips, self.retention), ratios=ratios)

    def calibrated_ratios(self):
        """The mean over every finished calibration run of its per-step ratios, [1.0] first as the published tables
        have it (list of num_steps floats)."""
        if not self.calibrate:
            raise ValueError("calibrated_ratios() needs MagCacheConfig(calibrate=True)")
        # a run of n steps records n - 1 ratios: a run stopped early is left out
        finished = [r for n, r in self._runs if len(r) == n - 1]
        if not finished:
            raise ValueError("no MagCache calibration run finished: generate with this config first")
        lengths = sorted({len(r) for r in finished})
        if len(lengths) > 1:
            raise ValueError(f"calibration runs of different step counts ({[n + 1 for n in lengths]}): calibrate "
                             "one step count per config")
        return [1.0] + [math.fsum(step) / len(finished) for step in zip(*finished)]


def resolve_cache(cache=None, teacache=None):
    """The cache config for a run, or None (exact). cache: None, "teacache", "magcache" (their defaults) or a
    TeaCacheConfig / MagCacheConfig; teacache: the legacy threshold argument, TeaCacheConfig(teacache)."""
    if teacache is not None:
        if cache is not None:
            raise ValueError(f"pass cache= or teacache= (its legacy threshold form), not both: cache={cache!r}, "
                             f"teacache={teacache!r}")
        if isinstance(teacache, bool) or not isinstance(teacache, (int, float)) or not 0 <= teacache < math.inf:
            raise ValueError(f"teacache must be a threshold >= 0 (the official app's: 0.15) or None, got {teacache!r}")
        return TeaCacheConfig(teacache)
    if cache is None or isinstance(cache, (TeaCacheConfig, MagCacheConfig)):
        return cache
    if isinstance(cache, str) and cache in CACHES:
        return TeaCacheConfig() if cache == "teacache" else MagCacheConfig()
    raise ValueError(f"unknown cache {cache!r}; expected None, one of {CACHES} or a TeaCacheConfig / MagCacheConfig")


def read_ratios_file(path, flag="--magcache-ratios"):
    """The ratios in a JSON file holding one list of numbers (what --magcache-calibrate prints); ValueError in one
    line for a missing, special, oversized, non-UTF-8 or malformed file."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{flag} {path}: not a regular file")
        if info.st_size > MAX_RATIOS_BYTES:
            raise ValueError(f"{flag} {path}: {info.st_size} bytes, more than a ratios list needs "
                             f"(at most {MAX_RATIOS_BYTES})")
        with open(path, "rb") as f:
            data = f.read(MAX_RATIOS_BYTES + 1)
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot read it ({e.strerror or e})") from None
    if len(data) > MAX_RATIOS_BYTES:
        raise ValueError(f"{flag} {path}: more than {MAX_RATIOS_BYTES} bytes")

    def refuse(constant):
        raise ValueError(f"{constant} is not a ratio")

    try:
        ratios = json.loads(data.decode("utf-8"), parse_constant=refuse)
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {path}: not UTF-8 text") from None
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{flag} {path}: not a JSON list of numbers ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(ratios, list):
        raise ValueError(f"{flag} {path}: expected a JSON list of numbers, got a JSON {type(ratios).__name__}")
    return check_ratios(ratios, what=f"{flag} {path}: ratios")


def finite_float(text):
    """argparse type: a finite float (nan and inf are refused); the CLI's too."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_cache_arguments(parser):
    """--cache and each cache's parameters on an argparse parser (the CLI's generate command)."""
    group = parser.add_argument_group("caches (approximate, faster)")
    group.add_argument("--cache", choices=CACHES, default=None,
                       help="skip the transformer's blocks on some steps: teacache (the official app's) or "
                            "magcache (FramePack-Studio's default)")
    group.add_argument("--cache-threshold", type=finite_float, default=None, metavar="FLOAT",
                       help="the cache's threshold (default: teacache 0.15, magcache 0.1)")
    group.add_argument("--magcache-k", type=int, default=None, metavar="INT",
                       help="MagCache: at most this many steps skipped in a row (default 2)")
    group.add_argument("--magcache-retention", type=finite_float, default=None, metavar="FLOAT",
                       help="MagCache: this fraction of the first steps always runs (default 0.25)")
    group.add_argument("--magcache-ratios", default=None, metavar="FILE.json",
                       help="MagCache: one's own ratios, a JSON list (default: the published tables)")
    group.add_argument("--magcache-calibrate", action="store_true",
                       help="run exactly and print the MagCache ratios of these settings as JSON at the end")
    return group


def cache_from_args(args):
    """The cache config the parsed arguments ask for, or None; also honours --teacache [THRESHOLD]. ValueError in
    one line for a combination that does not fit (the CLI reports it as a usage error)."""
    name, teacache = getattr(args, "cache", None), getattr(args, "teacache", None)
    threshold = getattr(args, "cache_threshold", None)
    mag = {"--magcache-k": getattr(args, "magcache_k", None),
           "--magcache-retention": getattr(args, "magcache_retention", None),
           "--magcache-ratios": getattr(args, "magcache_ratios", None)}
    calibrate = bool(getattr(args, "magcache_calibrate", False))
    if teacache is not None:
        if name is not None or threshold is not None:
            raise ValueError("--teacache THRESHOLD is the older form of --cache teacache --cache-threshold "
                             "THRESHOLD: give one of them")
        name, threshold = "teacache", teacache
    if calibrate:
        if name == "teacache":
            raise ValueError("--magcache-calibrate measures MagCache's ratios: it does not go with TeaCache")
        given = [flag for flag, value in [("--cache-threshold", threshold), *mag.items()] if value is not None]
        if given:
            raise ValueError(f"--magcache-calibrate runs every step exactly: drop {', '.join(given)}")
        return MagCacheConfig(calibrate=True)
    if name != "magcache":
        given = [flag for flag, value in mag.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need(s) --cache magcache")
    if name is None:
        if threshold is not None:
            raise ValueError("--cache-threshold needs --cache teacache or --cache magcache")
        return None
    if name == "teacache":
        return TeaCacheConfig() if threshold is None else TeaCacheConfig(threshold)
    options = {"threshold": threshold, "max_skips": mag["--magcache-k"], "retention": mag["--magcache-retention"]}
    if mag["--magcache-ratios"] is not None:
        options["ratios"] = read_ratios_file(mag["--magcache-ratios"])
    return MagCacheConfig(**{k: v for k, v in options.items() if v is not None})
