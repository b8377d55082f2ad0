"""Flow-matching samplers: the sigma schedule, Euler, and FramePack's UniPC, as pure functions.

Samplers follow k-diffusion's shape: sample_x(model, x, sigmas, callback=None). The model's
parametrisation lives in a wrapper (FlowModel): `velocity(x, sigma)` for Euler, `denoised(x, sigma)`
= x - sigma * v for UniPC (FramePack's `fm_wrapper`).
"""
import dataclasses
import math
from pathlib import Path

import torch

from framepack_native.configs import config_from_dict, read_json
from framepack_native.weights import CheckpointError


@dataclasses.dataclass(frozen=True)
class FlowMatchConfig:
    """The parts of diffusers' FlowMatchEulerDiscreteScheduler config that shape the schedule."""
    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    time_shift_type: str = "exponential"

    def __post_init__(self):
        if self.time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got {self.time_shift_type!r}")
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift}")

    @classmethod
    def from_file(cls, path):
        """Read scheduler_config.json; options that change the schedule and are not implemented are refused."""
        path = Path(path)
        doc = read_json(path)
        for flag in ("invert_sigmas", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                     "stochastic_sampling", "shift_terminal"):
            if doc.get(flag):
                raise CheckpointError(f"{path}: scheduler option {flag}={doc[flag]!r} is not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        return config_from_dict(cls, {k: v for k, v in doc.items() if k in fields and v is not None}, path)


def shift_mu(seq_len, config=FlowMatchConfig(), exp_max=7.0):
    """Resolution-dependent shift: linear in the token count between the config's two anchors, capped at ln(exp_max)."""
    m = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    mu = seq_len * m + (config.base_shift - m * config.base_image_seq_len)
    return min(mu, math.log(exp_max))


def flow_sigmas(num_steps, config=FlowMatchConfig(), mu=None):
    """Sigmas (num_steps + 1,) float32 from 1 down to a final 0, shifted as the scheduler config says.

    As diffusers' FramePack pipeline: linspace(1, 0, steps + 1)[:-1], then the dynamic (mu) shift when the
    config asks for it, else the static `shift`; a terminal 0 appended.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1].to(torch.float32)
    if config.use_dynamic_shifting:
        if mu is None:
            raise ValueError("this scheduler shifts by resolution: mu is required")
        # a tensor numerator: `scalar / tensor` in torch is reciprocal-then-multiply, rounded twice
        a = s.new_tensor(math.exp(mu) if config.time_shift_type == "exponential" else mu)
        s = a / (a + (1 / s - 1))
    else:
        s = config.shift * s / (1 + (config.shift - 1) * s)
    return torch.cat((s, s.new_zeros(1)))


def flux_sigmas(num_steps, mu):
    """The official FramePack schedule: linspace(1, 0, steps + 1) through exp(mu) / (exp(mu) + 1/t - 1)."""
    t = torch.linspace(1.0, 0.0, num_steps + 1)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def sample_euler(velocity, x, sigmas, callback=None):
    """Flow-matching Euler: x <- x + (sigma_next - sigma) * v(x, sigma), in float32. Returns x at sigmas[-1].

    velocity(x, sigma) -> v; sigmas (N + 1,) float32; callback({"i", "x", "sigma", "denoised"}) after each step,
    denoised = the step's clean prediction x - sigma * v (as UniPC's callback gives it).
    """
    x = x.float()
    for i in range(len(sigmas) - 1):
        v = velocity(x, sigmas[i]).float()
        x_prev, x = x, x + (sigmas[i + 1] - sigmas[i]) * v
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": x_prev - sigmas[i] * v})
    return x


def _unipc_coefficients(lambdas, lam_t, order, variant):
    """UniPC (Zhao et al. 2023, Alg. 1-2) B(h), phi_1 and predictor / corrector weights for one step.

    lambdas: the log-SNR-like times -log(sigma) of the stored model outputs, oldest first; lam_t the target.
    """
    h = lam_t - lambdas[-1]
    rks = [(lambdas[-(i + 1)] - lambdas[-1]) / h for i in range(1, order)] + [1.0]
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k, fact, rows, b = h_phi_1 / hh - 1, 1, [], []
    for k in range(1, order + 1):
        rows.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    R, b = torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if order == 1:
        rhos_p, rhos_c = [], [0.5]
    else:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        rhos_c = torch.linalg.solve(R, b).tolist()
    return rks[:-1], h_phi_1, b_h, rhos_p, rhos_c


def sample_unipc(denoised, x, sigmas, variant="bh1", callback=None):
    """FramePack's UniPC for flow matching (bh1 / bh2), up to third order, times lambda = -log(sigma).

    denoised(x, sigma) -> x0; sigmas (N + 1,) ending in 0. Returns the last x0 prediction (at sigmas[N-1]),
    as the official sampler does: the step onto sigma = 0 is never evaluated.
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    order = min(3, len(sigmas) - 2)
    sig = [float(s) for s in sigmas]
    ms, lambdas = [denoised(x, sigmas[0])], [-math.log(sig[0])]
    if callback is not None:
        callback({"i": 0, "x": x, "sigma": sigmas[0], "denoised": ms[-1]})
    for i in range(1, len(sigmas) - 1):
        p = min(i, order)
        lam_t = -math.log(sig[i])
        rks, h_phi_1, b_h, rhos_p, rhos_c = _unipc_coefficients(lambdas[-p:], lam_t, p, variant)
        m0 = ms[-1]
        d1s = [(ms[-(k + 1)] - m0) / rk for k, rk in zip(range(1, p), rks)]
        x_base = (sig[i] / sig[i - 1]) * x - h_phi_1 * m0
        x_pred = x_base - b_h * sum(r * d for r, d in zip(rhos_p, d1s)) if d1s else x_base
        m_t = denoised(x_pred, sigmas[i])
        corr = sum(r * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
        x = x_base - b_h * (corr + rhos_c[-1] * (m_t - m0))
        ms, lambdas = (ms + [m_t])[-order:], (lambdas + [lam_t])[-order:]
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "denoised": m_t})
    return ms[-1]
