"""Samplers vs their references: diffusers' FlowMatchEulerDiscreteScheduler, the official FramePack UniPC."""
import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack import calculate_shift
from framepack.diffusers_helper.k_diffusion.uni_pc_fm import sample_unipc as official_unipc

from framepack_native.sampling import FlowMatchConfig, flow_sigmas, flux_sigmas, sample_euler, sample_unipc, shift_mu
from tests.reference.official import official_functions

_official = official_functions("framepack.diffusers_helper.pipelines.k_diffusion_hunyuan",
                               ["flux_time_shift", "calculate_flux_mu", "get_flux_sigmas_from_mu"])
calculate_flux_mu, get_flux_sigmas_from_mu = _official["calculate_flux_mu"], _official["get_flux_sigmas_from_mu"]

CONFIGS = {
    "static_shift_7": dict(shift=7.0),
    "dynamic_exponential": dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),
    "dynamic_linear": dict(use_dynamic_shifting=True, time_shift_type="linear", base_shift=0.3, max_shift=1.5,
                           base_image_seq_len=128, max_image_seq_len=2048),
}


def reference_schedule(config_kwargs, steps, seq_len):
    """What diffusers' FramePack pipeline computes: linspace sigmas, capped mu, retrieve_timesteps."""
    import numpy as np
    sched = FlowMatchEulerDiscreteScheduler(**config_kwargs)
    c = sched.config
    mu = min(calculate_shift(seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift),
             math.log(7.0))
    sched.set_timesteps(steps, sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1], mu=mu)
    return sched, mu


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("steps, seq_len", [(1, 64), (7, 1530), (25, 9 * 40 * 30), (30, 100000)])
def test_sigmas_match_diffusers(name, steps, seq_len):
    sched, mu = reference_schedule(CONFIGS[name], steps, seq_len)
    config = FlowMatchConfig(**CONFIGS[name])
    ours_mu = shift_mu(seq_len, config)
    assert ours_mu == pytest.approx(mu, rel=1e-12)
    sigmas = flow_sigmas(steps, config, mu=ours_mu)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    torch.testing.assert_close(sigmas, sched.sigmas, rtol=0, atol=1e-7)
    torch.testing.assert_close(sigmas[:-1] * config.num_train_timesteps, sched.timesteps, rtol=0, atol=1e-4)


def test_scheduler_config_from_file(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(
        '{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7.0, "num_train_timesteps": 1000}')
    assert FlowMatchConfig.from_file(tmp_path / "scheduler_config.json").shift == 7.0
    (tmp_path / "scheduler_config.json").write_text('{"use_karras_sigmas": true}')
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        FlowMatchConfig.from_file(tmp_path / "scheduler_config.json")


def velocity_field(x, sigma):
    """A smooth, nonlinear, sigma-dependent field so that every step matters."""
    s = float(sigma)
    return torch.sin(3 * x) * (1 + s) - 0.5 * x + s * torch.cos(x)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_euler_matches_diffusers_scheduler(name):
    steps = 9
    sched, mu = reference_schedule(CONFIGS[name], steps, 2000)
    x0 = torch.randn(2, 4, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    ref = x0.clone()
    for i, t in enumerate(sched.timesteps):
        ref = sched.step(velocity_field(ref, sched.sigmas[i]).float(), t, ref, return_dict=False)[0]
    config = FlowMatchConfig(**CONFIGS[name])
    seen = []
    ours = sample_euler(velocity_field, x0, flow_sigmas(steps, config, mu=shift_mu(2000, config)),
                        callback=lambda d: seen.append(d["i"]))
    assert seen == list(range(steps))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_flux_schedule_matches_official():
    for seq in (100, 2000, 50000):
        mu = calculate_flux_mu(seq, exp_max=7.0)
        assert shift_mu(seq, FlowMatchConfig()) == pytest.approx(mu, rel=1e-12)
        for n in (1, 4, 25):
            torch.testing.assert_close(flux_sigmas(n, mu), get_flux_sigmas_from_mu(n, mu), rtol=0, atol=0)


def denoiser_field(x, sigma):
    """A known x0-prediction: nonlinear in x and in sigma (the wrapper of a velocity field)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).float() if torch.is_tensor(sigma) else float(sigma)
    return x - s * (torch.tanh(2 * x) * (1 + s) + 0.3 * torch.sin(5 * x))


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 10, 25])
def test_unipc_matches_official(variant, steps):
    x = torch.randn(2, 16, 3, 6, 5, generator=torch.Generator().manual_seed(steps))
    sigmas = flux_sigmas(steps, calculate_flux_mu(1234))
    ref = official_unipc(lambda xx, t: denoiser_field(xx, t), x.clone(), sigmas, extra_args={}, variant=variant,
                         disable=True)
    steps_seen = []
    ours = sample_unipc(lambda xx, s: denoiser_field(xx, s), x.clone(), sigmas, variant=variant,
                        callback=lambda d: steps_seen.append(d["i"]))
    assert steps_seen == list(range(steps))
    err = ((ours - ref).norm() / ref.norm()).item()
    assert err < 1e-5, err
    assert not torch.equal(ours, x)


def test_unipc_rejects_unknown_variant():
    with pytest.raises(ValueError, match="bh3"):
        sample_unipc(denoiser_field, torch.zeros(1, 2), flux_sigmas(3, 1.0), variant="bh3")
