"""The section loop of a run: for each Section of the plan, sample its window, join its latents to the history, decode
it and hand its frames to the FrameStore, in constant device memory, saving the run state after every section.

What a section is conditioned on comes from the pipeline as a SectionInputs per section (its prompt's embeddings,
image embedding and clean start latent: framepack_native.conditioning); how it samples is one Sampling for the run.
"""
import contextlib
from dataclasses import dataclass

import torch

from framepack_native.arguments import rescale_guidance
from framepack_native.frames import trim_host_heap
from framepack_native.noise import randn
from framepack_native.offload import streamed_blocks
from framepack_native.preview import LATENT_RGB, preview_picture
from framepack_native.sampling import sample_euler, sample_unipc
from framepack_native.sections import device_history_frames


class NonFiniteError(RuntimeError):
    """A section's latents or frames went NaN / inf; `frames` holds the finished sections' frames
    (B, F, 3, H, W) in [0, 1], or None when none had finished."""

    def __init__(self, message, frames=None):
        super().__init__(message)
        self.frames = frames


@dataclass
class SectionInputs:
    """What one section is conditioned on: text (B, L, D) + mask (B, L) + pooled (B, P) (negative ones under CFG, or
    None), SigLIP image_embeds (B, 729, 1152), the clean start latent (B, C, 1, h, w) float32 (the start image's, or
    a keyframe's), and `prompt`, what its callback event reports."""
    txt: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    neg: tuple | None
    image_embeds: torch.Tensor
    start_latents: torch.Tensor
    prompt: object
    prompt_weights: list | None = None


@dataclass
class Sampling:
    """How every section samples: sigmas (N + 1,), sampler "euler" | "unipc", guidance (B,) x 1000 in the model dtype,
    true_cfg_scale / guidance_rescale (used when a section has negative inputs), app_numerics (the official app's
    casts), the cache config (or None), and the noise shape's parts."""
    sigmas: torch.Tensor
    sampler: str
    steps: int
    guidance: torch.Tensor
    true_cfg_scale: float
    guidance_rescale: float
    app_numerics: bool
    cache: object
    sampling_type: str
    height: int
    width: int
    window: int
    dtype: torch.dtype
    parallel: object = None  # a framepack_native.parallel.Parallel: the guidance branches on two halves of the ranks


@dataclass
class LoopState:
    """The run's moving parts between sections: the device history (B, C, T, h, w) float32, how many of its latents
    are real, the host latents spilled from it (video order), the FrameStore, the image latents the inverted last
    section joins, and the last image's latents (or None)."""
    history: torch.Tensor
    generated: int
    spilled: list
    store: object
    image_latents: torch.Tensor
    last_latents: torch.Tensor | None


def guided_velocity(transformer, x, sigma, cond, context, caches, sampling):
    """The velocity of x (B, C, T, h, w) at sigma under cond (SectionInputs: text, mask, pooled, neg) and the frame
    inputs `context`, with classifier-free guidance when cond.neg is set -> float32 like x."""
    B, dtype, device = x.shape[0], sampling.dtype, sampling.guidance.device
    t = (sigma * 1000.0).expand(B).to(device)
    if sampling.app_numerics:
        t = t.to(dtype)

    def conditional():
        return transformer(x.to(dtype), t, cond.txt, cond.mask, cond.pooled, **context, cache=caches[0])

    def negative():
        return transformer(x.to(dtype), t, *cond.neg, **context, cache=caches[1])

    parallel = sampling.parallel
    if cond.neg is not None and parallel is not None and parallel.cfg:
        pred, neg = parallel.guided(transformer, conditional, negative)
    else:
        pred = conditional()
        neg = negative() if cond.neg is not None else None
    if cond.neg is not None:
        if sampling.app_numerics:  # fm_wrapper combines in float32
            pred, neg = pred.float(), neg.float()
        pred_cfg = neg + sampling.true_cfg_scale * (pred - neg)
        pred = rescale_guidance(pred_cfg.float(), pred.float(), sampling.guidance_rescale)
    return pred.float()


def unscale(vae, z, app_numerics):
    """Scaled latents -> the VAE decoder's input: the app divides in float32 and casts; diffusers casts first."""
    sf = vae.config.scaling_factor
    return (z / sf).to(vae.dtype) if app_numerics else z.to(vae.dtype) / sf


def sample(sampling, velocity, noise, callback=None):
    """Run the sampler over sampling.sigmas from noise with velocity(x, sigma) -> the clean latents (float32)."""
    if sampling.sampler == "euler":
        return sample_euler(velocity, noise, sampling.sigmas, callback=callback)
    return sample_unipc(lambda x, sig: x.float() - velocity(x, sig) * sig, noise, sampling.sigmas, callback=callback)


def run_sections(pipe, plan, inputs, sampling, state, *, first=0, run=None, generator=None, callback=None):
    """Generate plan[first:] (inputs[k]: the SectionInputs of plan[k]) into `state`; returns it."""
    transformer, vae, device = pipe.transformer, pipe.vae, pipe.device
    cfg, sections, steps = transformer.config, len(plan), sampling.steps
    B, dtype = sampling.guidance.shape[0], sampling.dtype
    keep = device_history_frames(sampling.window)
    previews = callback is not None and cfg.in_channels == len(LATENT_RGB)
    app = sampling.app_numerics

    def velocity(x, sigma, cond, context, caches):
        return guided_velocity(transformer, x, sigma, cond, context, caches, sampling)

    def unscaled(z):
        return unscale(vae, z, app)

    for s in plan[first:]:
        cond, store = inputs[s.index], state.store

        def check_finite(x, what, step=None):
            if not bool(torch.isfinite(x).all()):
                at = f"section {s.index + 1}/{sections}" + ("" if step is None else f", step {step + 1}/{steps}")
                raise NonFiniteError(f"non-finite {what} at {at} (an overflow: lower --guidance / --cfg, or use "
                                     "--dtype bf16 / fp32)", store.frames() if store.num_frames else None)

        def on_step(d):
            check_finite(d["x"], "latents", d["i"])
            check_finite(d["denoised"], "latents", d["i"])
            if callback is not None:
                callback({"kind": "step", "section": s.index, "sections": sections, "step": d["i"], "steps": steps,
                          "latents": d["x"], "denoised": d["denoised"],
                          "preview": preview_picture(d["denoised"]) if previews else None})

        h1, h2, h4 = s.read_history(state.history, state.last_latents)
        context = dict(image_embeds=cond.image_embeds, indices_latents=s.indices_latents, guidance=sampling.guidance,
                       latents_clean=torch.cat((cond.start_latents, h1), dim=2).to(dtype),
                       indices_latents_clean=s.indices_clean, latents_history_2x=h2.to(dtype),
                       indices_latents_history_2x=s.indices_2x, latents_history_4x=h4.to(dtype),
                       indices_latents_history_4x=s.indices_4x)
        # One cache state per guidance branch and section (the official app starts its TeaCache per section).
        caches = [None, None] if sampling.cache is None else [
            sampling.cache.start(steps, sampling_type=sampling.sampling_type, height=sampling.height,
                                 width=sampling.width) for _ in range(2)]
        noise = randn((B, cfg.in_channels, sampling.window, *state.history.shape[3:]), generator, device)
        with streamed_blocks(transformer, device) if pipe.offload else contextlib.nullcontext():
            latents = sample(sampling, lambda x, sig: velocity(x, sig, cond, context, caches), noise, on_step)
        caches = None  # the residuals (~0.2 GB a branch at 640x640) are not kept through the decode
        check_finite(latents, "latents", steps - 1)

        history, generated = s.join_latents(state.history, state.generated, latents, state.image_latents)
        with pipe._on_device(vae):
            # past `keep` the device buffer holds only the newest latents: all of them are real then
            current = vae.decode(unscaled(s.latents_to_decode(history, min(generated, history.shape[2]))))
        check_finite(current, "decoded frames")
        # the edge the next join blends: the next section's overlap, or after the last one the usual one (a
        # vanilla run may be extended later; an extension's first section blends fewer frames)
        usual = (sampling.window - 1) * vae.config.temporal_compression_ratio + 1
        chunk = store.join(s, current, plan[s.index + 1].overlap if s.index + 1 < sections else max(s.overlap, usual))
        del current
        old = None
        if history.shape[2] > keep:  # constant device memory: the rest waits on the host for output "latent"
            old, history = ((history[:, :, keep:], history[:, :, :keep]) if s.join == "front"
                            else (history[:, :, :-keep], history[:, :, -keep:]))
            old = old.clone(memory_format=torch.contiguous_format).cpu()  # a view would keep the whole buffer
            state.spilled.insert(0, old) if s.join == "front" else state.spilled.append(old)
            history = history.clone()
        state.history, state.generated = history, generated
        if run is not None:
            run.save(s.index, s.join, history, generated, old, chunk, store.edge, generator, device)
        trim_host_heap()  # the section's freed float intermediates back to the system: host memory ~ frames kept
        if callback is not None:
            event = {"kind": "section", "section": s.index, "sections": sections, "start_s": s.start_s,
                     "end_s": s.end_s, "prompt": cond.prompt, "frames_so_far": store.num_frames,
                     "video": store.frames}
            if cond.prompt_weights is not None:
                event["prompt_weights"] = cond.prompt_weights
            callback(event)
    return state


def all_latents(state, plan):
    """The run's real latents in video order, on the CPU: (B, C, generated, h, w)."""
    history = state.history.cpu()
    full = torch.cat([history, *state.spilled] if plan[-1].join == "front" else [*state.spilled, history], dim=2)
    return plan[-1].real_latents(full, state.generated)
