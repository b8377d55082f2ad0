"""FramePackPipeline: image + prompt -> video, section by section (Zhang & Agrawala 2025, Sec. 3).

Two presets (framepack_native.presets) decide everything around the model: preset="official" runs the official
app's worker loop (bucket + centre crop, resolution-shifted sigmas, UniPC, its section count, its random-number
order: the section noise from the generator as the app's `rnd`, the start-image posterior from a second one);
preset="diffusers" draws in the order and shapes of diffusers' HunyuanVideoFramepackPipeline (image posterior,
last-image posterior, then one noise tensor per section), so the same generator gives the same video.
"""
import contextlib
import math
import warnings

import PIL.Image
import torch

from framepack_native.arguments import SAMPLERS, check_arguments, image_size, rescale_guidance, run_sections_count  # noqa: F401
from framepack_native.conditioning import check_keyframe_embeds, plan_keyframes, plan_prompts
from framepack_native.encoding import section_inputs, section_texts
from framepack_native.extension import DEFAULT_CONTEXT_LATENTS, extended_plan, read_source
from framepack_native.image import (SiglipProcessorConfig, center_crop_uint8, nearest_bucket,
                                    siglip_pixels, siglip_pixels_uint8, to_uint8_picture, vae_pixels)
from framepack_native.frames import FrameStore
from framepack_native.offload import on_device, streamed_blocks
from framepack_native.presets import get_preset, second_generator
from framepack_native.files import sha256
from framepack_native.run_state import RunState, picture_digest, seed_digest, vae_tiling, weights_digest
from framepack_native.prompt import CROP_START, HUNYUAN_TEMPLATE, MAX_SEQUENCE_LENGTH, encode_prompt
from framepack_native.sampling import FlowMatchConfig, flow_sigmas, flux_sigmas, shift_mu
from framepack_native.section_loop import LoopState, NonFiniteError, Sampling, all_latents, run_sections  # noqa: F401
from framepack_native.sections import SAMPLING_TYPES, history_init, num_sections, section_plan  # noqa: F401
from framepack_native.caches import resolve_cache
from framepack_native.lora import loras

OUTPUT_TYPES = ("pt", "uint8", "np", "pil", "latent")


class PromptTruncated(UserWarning):
    """A prompt longer than the Llama encoder's 256 tokens: only its first 256 condition the video."""


class FramePackPipeline:
    """All components of one converted folder, and the section loop that runs them."""

    def __init__(self, transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, image_encoder,
                 image_processor=SiglipProcessorConfig(), scheduler=FlowMatchConfig(shift=7.0),
                 sampling_type="inverted_anti_drifting", device="cuda", offload=False):
        if sampling_type not in SAMPLING_TYPES:
            raise ValueError(f"unknown sampling type {sampling_type!r}; expected one of {SAMPLING_TYPES}")
        self.transformer, self.vae = transformer, vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.image_encoder, self.image_processor = image_encoder, image_processor
        self.scheduler, self.sampling_type = scheduler, sampling_type
        self.device, self.offload = torch.device(device), offload
        self.parallel = None  # a framepack_native.parallel.Parallel once enable_parallel() ran

    def enable_parallel(self, group=None, cfg=True):
        """Run every section on the ranks of a torch.distributed group (None: the default one, e.g. torchrun's):
        each transformer call split over them (sequence parallel), and with cfg=True and an even number of ranks
        the two guidance branches at once on two halves of them (framepack_native.parallel). Every rank calls the
        pipeline with the same arguments and gets the same frames; the rest of the pipeline (encoders, VAE) runs
        on every rank. A group of one rank changes nothing."""
        from framepack_native.parallel import Parallel
        plan = Parallel(group, cfg)
        plan.check(self.transformer.config.num_attention_heads)
        if plan.sequence.world > 1:
            self.transformer.enable_sequence_parallel(group)
            self.parallel = plan
        return self

    @classmethod
    def from_pretrained(cls, native_dir, dtype=None, device="cuda", offload=False, preset="official", quantize=None,
                        loras=(), parallel=None):
        """Load every component of a folder written by `python -m weights_convert`.

        dtype: None (the preset's per-component dtypes for the device: official on CUDA = transformer bf16 with
        its final Linear in float32, Llama / CLIP / SigLIP / VAE fp16; diffusers on CUDA = bf16; float32 on the
        CPU), one torch.dtype for all, or {component: dtype} (the rest from the preset); components are
        transformer, vae, text_encoder, text_encoder_2, image_encoder.
        offload=True keeps the weights on the CPU and moves each component to `device` only while it works,
        the transformer and the Llama encoder one block at a time (framepack_native.offload), so the 13B model
        runs on a 24 GB GPU.
        quantize="fp8": the transformer's block Linear layers in block-scaled fp8, dequantised to its dtype at each
        use (half the memory; a folder converted with --dtype fp8 is fp8 anyway); {component: "fp8"} for the
        transformer and / or the Llama text_encoder (its decoder layers: musubi-tuner's --fp8_llm). loras: LoRA files (paths or
        (path, strength)) merged into the transformer as it loads (with fp8, before quantising).
        parallel: None picks up an initialised torch.distributed group of several ranks (torchrun's) and splits
        every section over it (enable_parallel); True: the default group; a process group: that one; False: one
        process's pipeline even there (e.g. one independent copy per GPU).
        """
        from framepack_native.pipeline_loading import load_pipeline
        return load_pipeline(cls, native_dir, dtype, device, offload, preset, quantize, loras, parallel)

    def load_lora(self, path, strength=1.0, **options):
        """Apply a LoRA to the transformer (repeatable: several at once, each with its strength)."""
        return self.transformer.load_lora(path, strength, **options)

    def one_frame(self, image, prompt, **options):
        """One frame at a chosen time index from control images (musubi's one-frame inference; kisekaeichi and 1f-mc
        are recipes): framepack_native.one_frame.generate_one_frame, whose docstring lists the options."""
        from framepack_native.one_frame import generate_one_frame
        return generate_one_frame(self, image, prompt, **options)

    def unload_lora(self):
        """Remove every LoRA from the transformer, its weights restored bit for bit."""
        return self.transformer.unload_lora()

    def _on_device(self, module):
        return on_device(module, self.device, self.offload)

    def _encode_text(self, prompts, dtype):
        limit = CROP_START + MAX_SEQUENCE_LENGTH
        if len(self.tokenizer.encode(HUNYUAN_TEMPLATE.format(""))) <= limit:  # (not the demo's byte tokenizer)
            for text in prompts:
                n = len(self.tokenizer.encode(HUNYUAN_TEMPLATE.format(text))) - CROP_START
                if n > MAX_SEQUENCE_LENGTH:
                    warnings.warn(PromptTruncated(
                        f"the prompt is {n} tokens long with the template's end; only the first "
                        f"{MAX_SEQUENCE_LENGTH} condition the video: {text[:40]!r}..."))
        llama = (streamed_blocks(self.text_encoder, self.device, ("layers",)) if self.offload
                 else contextlib.nullcontext())
        with llama, self._on_device(self.text_encoder_2):
            embeds, mask, pooled = encode_prompt(prompts, self.tokenizer, self.text_encoder, self.tokenizer_2,
                                                 self.text_encoder_2)
        return embeds.to(self.device, dtype), mask.to(self.device), pooled.to(self.device, dtype)

    def _encode_image(self, image, batch, height, width, generator, dtype, fit):
        """-> SigLIP embeds (B, 729, 1152) in dtype, scaled VAE latents (B, C, 1, h, w) float32.

        fit "crop" (the official app): the centre-cropped uint8 picture, x / 127.5 - 1 for the VAE and itself for
        SigLIP's processor; "stretch" (diffusers): VideoProcessor pixels, SigLIP from those floats.
        """
        if fit == "crop":
            picture = center_crop_uint8(to_uint8_picture(image), height, width)  # (H, W, 3) uint8
            pixels = (torch.from_numpy(picture).float() / 127.5 - 1).permute(2, 0, 1)[None]  # (1, 3, H, W)
            siglip = siglip_pixels_uint8(picture, self.image_processor).expand(batch, -1, -1, -1)
        else:
            pixels = vae_pixels(image, height, width)  # (1, 3, H, W)
            siglip = siglip_pixels(pixels, self.image_processor).expand(batch, -1, -1, -1)
        pixels = pixels.expand(batch, -1, -1, -1).to(self.device)  # (B, 3, H, W)
        with self._on_device(self.image_encoder):
            enc = self.image_encoder(siglip.to(self.device, self.image_encoder_dtype))
        with self._on_device(self.vae):
            posterior = self.vae.encode(pixels[:, :, None].to(self.vae.dtype))  # (B, 3, 1, H, W) in
            latents = posterior.sample(generator) * self.vae.config.scaling_factor
        return enc.to(dtype), latents.float()

    @property
    def image_encoder_dtype(self):
        return next(self.image_encoder.parameters()).dtype

    @torch.no_grad()
    def __call__(self, image, prompt, *, preset="official", last_image=None, negative_prompt=None, resolution=640,
                 height=None, width=None, seconds=None, num_frames=None, latent_window_size=9,
                 num_inference_steps=25, guidance_scale=10.0, true_cfg_scale=1.0, guidance_rescale=0.0,
                 generator=None, sampling_type=None, sampler=None, average_last_image_embeds=True, cache=None,
                 teacache=None, blend_sections=0, keyframes=None, keyframe_embeds=0.0, video=None,
                 context_latents=DEFAULT_CONTEXT_LATENTS, output_type="pt", callback=None, state_dir=None,
                 resume=False):
        """Generate (B, F, 3, H, W) frames in [0, 1], F = (sections' frames - 1) // 4 * 4 + 1.

        preset: "official" (the official app's worker loop) or "diffusers" (HunyuanVideoFramepackPipeline); every
        explicit argument overrides its preset's value (framepack_native.presets, README's preset table).
        image / last_image: a path, PIL image, array or tensor (one image, used for every prompt);
        prompt: a string, a batch of strings, or one video's timestamped prompt ("[0s-2s: a cat sleeps] [2s: the
        cat wakes up]", a PromptSchedule, [(start_seconds, text), ...]): each section uses the prompt active at its
        start in the final video; blend_sections > 0 mixes the embeddings over that many sections after each change
        (framepack_native.conditioning);
        keyframes: {seconds: image}, each anchoring the section whose span holds it (its latent as the section's
        clean start latent; keyframe_embeds in [0, 1]: its SigLIP embedding's weight); one at the last frame is the
        last image (framepack_native.conditioning);
        video: frames (F, 3, H, W) (float in [0, 1] or uint8) or a video file to extend forward (vanilla
        sampling): its last context_latents latents condition the new sections, the output is its frames
        unchanged followed by the new ones, blended across one overlap (framepack_native.extension); image None
        takes the video's first frame;
        resolution: without height / width, the app's nearest bucket for the image's aspect ratio (640: 14 buckets);
        seconds: the length at 30 fps, as the preset counts sections (official: round(seconds * 30 / (4 * window)));
        num_frames: the length in frames instead (enough sections to cover it); neither: 5 s (official) or 129
        frames (diffusers);
        guidance_scale: the distilled guidance (x 1000 into the model); true_cfg_scale: classifier-free guidance
        (official: on when != 1, the negative prompt "" unless given; diffusers: > 1 and a negative prompt given);
        sampler "unipc" (FramePack's; official) or "euler" (diffusers' scheduler); generator None: seed 31337
        (official) or torch's global RNG (diffusers);
        average_last_image_embeds: with last_image, condition on the mean of both SigLIP embeddings (FramePack
        PR #167); diffusers (0.42) computes that mean but passes the first image's embeddings only: False does that.
        cache: None (exact), "teacache" (the official app's, threshold 0.15), "magcache" (FramePack-Studio's
        defaults) or a framepack_native.caches config with its parameters: skip the transformer's blocks on some
        steps, reusing their last residual (approximate, faster); teacache=THRESHOLD: the same as
        cache=TeaCacheConfig(THRESHOLD).
        output_type: "pt" (float32 (B, F, 3, H, W) in [0, 1], the default), "uint8" (the same layout as uint8: no
        float copy of the video anywhere), "np" (float32 (B, F, H, W, 3)), "pil" (B lists of F PIL images) or
        "latent" (the generated latents (B, C, 1 + S * W, h, w) in video order; extending: the c context latents,
        then S * W); all on the CPU. Decoded frames
        leave the device section by section (framepack_native.frames): device memory does not grow with the length.
        callback(event): event["kind"] "step" (section, sections, step, steps, latents, preview: uint8 (B h, T w, 3)
            of the predicted clean latents through the app's latent-to-RGB map, or None without 16 latent channels)
            or "section" (section, sections, start_s, end_s: its span in the final video, prompt: the text it used,
            prompt_weights: [(text, weight)] when blended, frames_so_far, video: a function returning the frames so
            far (B, F, 3, H, W) on the CPU); with resume, first a "resume" event (sections_done, sections,
            frames_so_far, video).
        state_dir: a folder for the run's state, saved after every section (framepack_native.run_state); resume=True
            continues the run saved there after its last finished section, with the same video as a run never
            stopped; a state of other arguments, pictures, seed or weights is refused (run_state.ResumeError, a
            ValueError naming what differs) before anything runs. A finished run's state stays (resuming it returns
            the video at once; a vanilla run resumed with a longer length is extended by the sections it lacks,
            exactly as one run of that length); delete the folder when done.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}")
        p = get_preset(preset)
        sampling_type = sampling_type or self.sampling_type
        sampler = sampler or p.sampler
        vae_t = self.vae.config.temporal_compression_ratio
        if sampling_type not in SAMPLING_TYPES:
            raise ValueError(f"unknown sampling type {sampling_type!r}; expected one of {SAMPLING_TYPES}")
        if image is None and video is None:
            raise ValueError("image is None: give the start image (or video= to extend, whose first frame it takes)")
        source = None if video is None else read_source(video, sampling_type, context_latents, vae_t)
        if image is None and source is not None:
            image = source.first_frame
        check_arguments(prompt, last_image, height, width, num_frames, latent_window_size, num_inference_steps,
                        sampling_type, sampler, seconds, negative_prompt)
        scales = {"guidance_scale": guidance_scale, "true_cfg_scale": true_cfg_scale,
                  "guidance_rescale": guidance_rescale}
        for name, value in scales.items():
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")  # NaN would give a black video
        cache = resolve_cache(cache, teacache)
        keyframe_embeds = check_keyframe_embeds(keyframe_embeds)
        if height is None:
            height, width = source.size() if source is not None else nearest_bucket(*image_size(image), resolution)
        if source is not None:
            source.check_size(height, width)
        sections = run_sections_count(p, seconds, num_frames, latent_window_size, vae_t)
        plan = section_plan(sampling_type, sections, latent_window_size, last_image=last_image is not None,
                            temporal_ratio=vae_t)
        keys, last_image = plan_keyframes(keyframes, extended_plan(plan, source), last_image=last_image)
        if last_image is not None and not plan[0].uses_last_image:  # the last image came as a keyframe
            plan = section_plan(sampling_type, sections, latent_window_size, last_image=True, temporal_ratio=vae_t)
        plan = extended_plan(plan, source)
        prompt_plan = plan_prompts(prompt, plan, blend_sections)
        B, dtype, device = (1 if not prompt_plan.batch else len(prompt_plan.texts)), self.transformer_dtype, self.device
        if abs(guidance_scale) * 1000 > torch.finfo(dtype).max:  # the guidance embedding's input, x 1000
            raise ValueError(f"guidance_scale {guidance_scale:g} x 1000 overflows the transformer's {dtype} "
                             f"(at most {torch.finfo(dtype).max / 1000:g})")
        if negative_prompt is None:
            negative_prompt = p.cfg_negative
        do_cfg = negative_prompt is not None and (true_cfg_scale != 1 if p.app_numerics else true_cfg_scale > 1)
        negs = None
        if do_cfg:
            negs = [negative_prompt] * B if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negs) != B:
                raise ValueError(f"{len(negs)} negative prompts for {B} prompts")
        if generator is None and p.seed is not None:
            generator = torch.Generator().manual_seed(p.seed)
        posterior_generator = second_generator(generator) if p.posterior == "second_generator" else generator
        storage = "uint8" if output_type in ("uint8", "pil") else "float"
        run = None
        if resume and state_dir is None:
            raise ValueError("resume=True needs the state_dir of the run to resume")
        if self.parallel is not None and getattr(cache, "calibrate", False):
            raise ValueError("a MagCache calibration must see every transformer call: run it in one process")
        if resume and getattr(cache, "calibrate", False):
            raise ValueError("a MagCache calibration must see every section: it cannot resume a run")
        if state_dir is not None:
            fingerprint = dict(
                preset=preset, sampling_type=sampling_type, sampler=sampler,
                prompt=prompt_plan.fingerprint(blend_sections),
                negative_prompt=negative_prompt if do_cfg else None, true_cfg_scale=true_cfg_scale,
                guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, image=picture_digest(image),
                last_image=None if last_image is None else picture_digest(last_image),
                average_last_image_embeds=average_last_image_embeds if last_image is not None else None,
                keyframes=[[k.seconds, picture_digest(k.image)] for k in keys] or None,
                keyframe_embeds=keyframe_embeds if keys else None,
                video=None if source is None else source.fingerprint(),
                height=height, width=width, latent_window_size=latent_window_size,
                num_inference_steps=num_inference_steps, cache=repr(cache), frames=storage,
                seed=seed_digest(generator, device), dtype=str(dtype), device=device.type,
                vae_tiling=vae_tiling(self.vae), kernel_backend=self.transformer.kernel_backend,
                scheduler=repr(self.scheduler), torch=torch.__version__, model=weights_digest(self.components),
                loras=[(sha256(lora.path), lora.strength, lora.live) for lora in loras(self.transformer)])
            if sampling_type != "vanilla":  # vanilla sections do not depend on the length: a longer run extends it
                fingerprint["sections"] = sections
            run = RunState(state_dir, fingerprint, sections, resume)

        texts = section_texts(self, prompt_plan, dtype)  # every distinct prompt once, then the negative one
        neg = self._encode_text(negs, dtype) if do_cfg else None
        # posterior draws: the start image, the last image, then the keyframes (framepack_native.encoding)
        def encode(picture):
            return self._encode_image(picture, B, height, width, posterior_generator, dtype, p.image_fit)
        image_embeds, image_latents = encode(image)
        last_latents = None
        if last_image is not None:
            last_embeds, last_latents = encode(last_image)
            if average_last_image_embeds:
                image_embeds = (image_embeds + last_embeds) / 2
        inputs = section_inputs(plan, texts, neg, image_embeds, image_latents, keys, keyframe_embeds,
                                encode, dtype)

        h, w = height // self.vae.config.spatial_compression_ratio, width // self.vae.config.spatial_compression_ratio
        if p.app_numerics:  # fm_wrapper / sample_hunyuan: scaled in float, then cast
            guidance = torch.full((B,), guidance_scale * 1000.0, device=device).to(dtype)
        else:
            guidance = torch.full((B,), guidance_scale, dtype=dtype, device=device) * 1000.0
        seq_len = latent_window_size * h * w / self.transformer.config.patch_size**2
        if p.schedule == "resolution":  # the app's constants, whatever the scheduler config says
            sigmas = flux_sigmas(num_inference_steps, shift_mu(seq_len)).to(device)
        else:
            sigmas = flow_sigmas(num_inference_steps, self.scheduler, mu=shift_mu(seq_len, self.scheduler)).to(device)
        sampling = Sampling(sigmas, sampler, num_inference_steps, guidance, true_cfg_scale, guidance_rescale,
                            p.app_numerics, cache, sampling_type, height, width, latent_window_size, dtype,
                            self.parallel)
        if source is None:
            history, generated = history_init(image_latents, sampling_type)
            state = LoopState(history, generated, [], FrameStore(storage), image_latents, last_latents)
        else:
            state = source.start(self, storage, B, device, latent_window_size, image_latents)
        if run is not None and run.done:
            state.history, state.generated, state.spilled, chunks, edge, side = run.restore(generator, device)
            state.store = FrameStore.restore(storage, chunks, edge, side)
            if source is not None and source.num_frames > source.overlap(latent_window_size):
                state.store.chunks.insert(0, source.head(B, storage, latent_window_size))  # the input's frames are not in the state
            if callback is not None:
                callback({"kind": "resume", "sections_done": run.done, "sections": sections,
                          "frames_so_far": state.store.num_frames, "video": state.store.frames})
        run_sections(self, plan, inputs, sampling, state, first=run.done if run is not None else 0, run=run,
                     generator=generator, callback=callback)

        if output_type == "latent":
            return all_latents(state, plan)  # (B, C, 1 + S * W, h, w), video order
        store = state.store
        keep = None if source is not None else (store.num_frames - 1) // vae_t * vae_t + 1
        frames = store.frames(keep=keep)  # (B, F, 3, H, W) on the CPU
        if output_type in ("pt", "uint8"):
            return frames
        if output_type == "np":
            return frames.permute(0, 1, 3, 4, 2).numpy()  # (B, F, H, W, 3) float32, diffusers' np layout
        return [[PIL.Image.fromarray(f.permute(1, 2, 0).numpy()) for f in video] for video in frames]  # "pil"

    @property
    def components(self):
        """{name: module} of the five models."""
        return dict(transformer=self.transformer, vae=self.vae, text_encoder=self.text_encoder,
                    text_encoder_2=self.text_encoder_2, image_encoder=self.image_encoder)

    @property
    def transformer_dtype(self):
        return next(self.transformer.parameters()).dtype
