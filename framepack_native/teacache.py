"""TeaCache as the official FramePack app runs it: on a sampling step whose input to the first block moved little
since the last one, skip every transformer block and reuse the residual (blocks' output - input) last computed.

Source: Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model" (2024); FramePack's
HunyuanVideoTransformer3DModelPacked.initialize_teacache for the schedule, the fitted rescaling and the threshold.
Approximate by design: the output differs from the uncached model on skipped steps.
"""
import dataclasses
from typing import Optional

import torch

# FramePack's polynomial from the relative L1 change of the modulated input to the change of the output
# (highest power first).
RESCALE = (7.33226126e+02, -4.01131952e+02, 6.75869174e+01, -3.14987800e+00, 9.61237896e-02)
DEFAULT_THRESHOLD = 0.15  # FramePack's default; it quotes 0.1 for a 1.6x and 0.15 for a 2.1x speed-up


@dataclasses.dataclass
class TeaCache:
    """The state of one sampling run of `num_steps` transformer calls (one per step); make one per section and
    per guidance branch. The first and the last step are always computed."""
    num_steps: int
    threshold: float = DEFAULT_THRESHOLD
    step: int = dataclasses.field(default=0, init=False)
    accumulated: float = dataclasses.field(default=0.0, init=False)
    previous: Optional[torch.Tensor] = dataclasses.field(default=None, init=False)  # (B, L, D) last probe
    residual: Optional[torch.Tensor] = dataclasses.field(default=None, init=False)  # (B, Lw, D) output - input
    skipped: int = dataclasses.field(default=0, init=False)
    computed: int = dataclasses.field(default=0, init=False)
    probes_first_block = True  # FramePackTransformer refuses a model without a dual-stream block (not a field)

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"TeaCache's threshold is a number (the official app's default: {DEFAULT_THRESHOLD}), "
                             f"got {self.threshold!r}")
        if self.num_steps < 1 or not self.threshold >= 0:
            raise ValueError(f"TeaCache needs num_steps >= 1 and threshold >= 0, got {self.num_steps}, "
                             f"{self.threshold}")

    def compute(self, modulated):
        """Whether this call runs the blocks, given the first block's modulated image input (B, L, D)."""
        if self.previous is not None and modulated.shape != self.previous.shape:
            raise ValueError(f"this TeaCache saw inputs {tuple(self.previous.shape)}, now {tuple(modulated.shape)}: "
                             "make one per sampling run")
        if self.step in (0, self.num_steps - 1) or self.residual is None:
            run, self.accumulated = True, 0.0
        else:
            change = ((modulated - self.previous).abs().mean() / self.previous.abs().mean()).item()
            self.accumulated += _polyval(RESCALE, change)
            run = self.accumulated >= self.threshold
            if run:
                self.accumulated = 0.0
        self.previous = modulated
        self.step = (self.step + 1) % self.num_steps
        self.skipped += not run
        self.computed += run
        return run

    def run(self, blocks, img, window, probe):
        """The blocks' window rows (B, Lw, D), computed or img's window + the last residual (the cache protocol of
        framepack_native.caches). blocks(rows) -> (B, R, D); img (B, Li, D); probe() -> the first block's
        modulated img (B, Li, D), what compute() tests."""
        if self.compute(probe()):
            x = blocks(window)
            self.residual = x - img[:, window]  # the blocks never write into img
            return x
        return img[:, window] + self.residual


def _polyval(coefficients, x):
    """Horner's rule, highest power first (numpy.poly1d's order)."""
    value = 0.0
    for c in coefficients:
        value = value * x + c
    return value
