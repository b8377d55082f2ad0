"""MagCache for the FramePack transformer: skip every block on steps whose calibrated residual magnitude ratio says
the blocks' residual (output - input) barely changed, and reuse the last one computed.

Source: Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache" (arXiv 2506.09045);
Zehong-Ma/MagCache MagCache4FramePack/magcache_demo_gradio.py (magcache_framepack_forward / _calibration) and
FP-Studio/framepack-studio diffusers_helper/models/mag_cache.py (MagCache.should_skip, _determine_mag_ratios,
_nearest_step_interpolation) for the rule, the ratio selection and the calibration. The schedule depends only on
the calibrated ratios, never on the input, so it is computed once per run (`skip_schedule`). Approximate by design.
This module does not import torch: it only calls tensor methods.
"""
import dataclasses
from typing import Any, List, Optional, Tuple

from framepack_native.magcache_ratios import TABLES

RATIO_TOLERANCE = 0.06  # a step is skipped only if its own ratio is within this of 1 (MC; FPS keeps it fixed too)
SAMPLING_TYPES = tuple(TABLES)  # ("inverted_anti_drifting", "vanilla"): FPS "Original", "F1"


def skip_schedule(ratios, threshold, max_skips, retention):
    """MagCache's decision for each step (True = skip), MC magcache_framepack_forward / FPS MagCache.should_skip.

    ratios: one per step (ratios[0] unused: step 0 always runs); from step max(1, int(retention * steps)):
    product *= ratios[t], error += |1 - product|, run += 1; skip while error <= threshold, run <= max_skips and
    |1 - ratios[t]| <= RATIO_TOLERANCE, else compute and reset (product 1, error 0, run 0). threshold 0 never
    skips (the references would still skip a step whose ratio is exactly 1.0: zero estimated error, not zero error).
    """
    steps = len(ratios)
    skip = [False] * steps
    if threshold == 0:
        return tuple(skip)
    product, error, run = 1.0, 0.0, 0
    for t in range(max(1, int(retention * steps)), steps):
        product *= ratios[t]
        error += abs(1 - product)
        run += 1
        if error <= threshold and run <= max_skips and abs(1 - ratios[t]) <= RATIO_TOLERANCE:
            skip[t] = True
        else:
            product, error, run = 1.0, 0.0, 0
    return tuple(skip)


def nearest_interp(ratios, num_steps):
    """The ratios resampled to num_steps by nearest index (MC nearest_interp, FPS _nearest_step_interpolation):
    out[i] = ratios[round(i * (n - 1) / (num_steps - 1))], round half to even as numpy's; one step: the last."""
    if num_steps == 1:
        return (ratios[-1],)
    scale = (len(ratios) - 1) / (num_steps - 1)
    return tuple(ratios[round(i * scale)] for i in range(num_steps))


def published_ratios(sampling_type, height, width, num_steps):
    """The published ratios for a run (FPS _determine_mag_ratios): the table of the resolution nearest the mean of
    height and width (pixels; ties to the larger), its step count nearest num_steps, resampled by nearest_interp when
    that count differs. Returns num_steps floats."""
    if sampling_type not in TABLES:
        raise ValueError(f"MagCache has published ratios for sampling types {SAMPLING_TYPES}, got {sampling_type!r}")
    by_resolution = TABLES[sampling_type]
    resolution = min(by_resolution, key=lambda r: abs(r - (height + width) / 2))  # first listed wins a tie
    by_steps = by_resolution[resolution]
    steps = min(by_steps, key=lambda s: abs(s - num_steps))
    return by_steps[steps] if steps == num_steps else nearest_interp(by_steps[steps], num_steps)


@dataclasses.dataclass
class MagCache:
    """The state of one sampling run (one section, one guidance branch): its skip schedule (one bool per step,
    True = skip) and the blocks' last residual; FramePackTransformer.forward calls `run` once per step.

    calibration: a list to append each step's ratio to (t >= 1), or None; a calibrating run never skips and
    measures its residual over all image tokens (history and window), as the references do.
    """
    schedule: Tuple[bool, ...]
    ratios: Optional[Tuple[float, ...]] = None  # what the schedule was made from (None when calibrating)
    calibration: Optional[List[float]] = None
    step: int = dataclasses.field(default=0, init=False)
    residual: Any = dataclasses.field(default=None, init=False)  # (B, Lw, D) the window's output - input
    norms: Any = dataclasses.field(default=None, init=False)  # (B, Li) float32 ||residual|| per token (calibration)
    skipped: int = dataclasses.field(default=0, init=False)
    computed: int = dataclasses.field(default=0, init=False)

    def __post_init__(self):
        if not self.schedule or self.schedule[0]:
            raise ValueError(f"a MagCache schedule has >= 1 step and never skips step 0, got {self.schedule}")
        if self.calibration is not None and any(self.schedule):
            raise ValueError("a calibrating MagCache runs every step exactly; its schedule skips some")

    @property
    def num_steps(self):
        return len(self.schedule)

    def run(self, blocks, img, window, probe=None):
        """The blocks' window rows (B, Lw, D), computed or img's window + the last residual (the cache protocol of
        framepack_native.caches). blocks(rows) -> (B, R, D) for image rows `rows`; img (B, Li, D); window: a slice."""
        if self.step >= self.num_steps:
            raise ValueError(f"this MagCache was started for {self.num_steps} steps and is called once more: start "
                             "one per sampling run (section and guidance branch)")
        skip = self.schedule[self.step]
        self.step += 1
        if skip:
            if self.residual.shape != img[:, window].shape:
                raise ValueError(f"this MagCache saw windows {tuple(self.residual.shape)}, now "
                                 f"{tuple(img[:, window].shape)}: start one per sampling run")
            self.skipped += 1
            return img[:, window] + self.residual
        self.computed += 1
        if self.calibration is None:
            x = blocks(window)
            self.residual = x - img[:, window]  # the blocks never write into img
            return x
        full = blocks(slice(0, img.shape[1]))  # (B, Li, D): every image token, the references' residual
        norms = (full - img).float().norm(dim=-1)  # (B, Li)
        if self.norms is not None:
            self.calibration.append((norms / self.norms).mean().item())
        self.norms = norms
        return full[:, window]
