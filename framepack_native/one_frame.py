"""One-frame generation: a single latent frame at a chosen time index, conditioned on control images at chosen
indices (musubi-tuner's `--one_frame_inference`, docs/framepack_1f.md; not a feature of the official app).

The recipe (one_frame_inputs), for latent window W:
  noisy latents (B, C, 1, h, w) at frame index `target_index` (default W);
  clean latents: the control images' VAE latents in the order given (none: one zero latent), each multiplied by its
      latent mask (1 = referenced, 0 = ignored), then, unless post=False, one zero latent (the "clean latent post");
      their indices: control_indices in order (default 0 for every control), the post at 1 + W;
  2x history: two zero latents at indices W + 2, W + 3 (history_2x=False: none passed);
  4x history: sixteen zero latents at W + 4 .. W + 19 (history_4x=False: none passed).
The image embedding is the SigLIP embedding of `image` (the start image); the sigmas are those of a one-frame window
(seq len h w / 4). The one latent is decoded alone -> (B, 1, 3, H, W).
Two published recipes (RECIPES): kisekaeichi (furusu): controls [start, reference] at indices 0 and 10, masks, target
1, no post / 2x / 4x; 1f-mc (mattyamonaca): controls [start, second] at 0 and 1, target 9, post kept, no 2x / 4x.
A latent mask is a picture (path, PIL, (H, W) array or tensor, uint8 or float in [0, 1]) of the control image's own
size, fitted as the image is (centre crop for the official preset, stretch for diffusers), turned grey and resized
to the latent size (Lanczos), / 255; a control image with an alpha channel (a PNG path or an RGBA PIL image) uses it
as its mask unless one is given.
"""
import dataclasses

import numpy as np
import PIL.Image
import torch

from framepack_native.image import center_crop_uint8, load_image
from framepack_native.sections import HISTORY_SIZES


@dataclasses.dataclass(frozen=True)
class OneFrameRecipe:
    """target_index None: the window's last index, W; control_indices None: 0 for every control image."""
    target_index: int | None = None
    control_indices: tuple | None = None
    post: bool = True
    history_2x: bool = True
    history_4x: bool = True


RECIPES = {
    "default": OneFrameRecipe(),
    "kisekaeichi": OneFrameRecipe(target_index=1, control_indices=(0, 10), post=False, history_2x=False,
                                  history_4x=False),
    "1f-mc": OneFrameRecipe(target_index=9, control_indices=(0, 1), post=True, history_2x=False, history_4x=False),
}


def parse_recipe(text):
    """musubi's option string ("target_index=1,control_index=0;10,no_post,no_2x,no_4x", or "default") or a recipe
    name of RECIPES (which may be followed by options overriding it: "kisekaeichi,target_index=5") -> recipe."""
    recipe = OneFrameRecipe()
    for i, part in enumerate(p.strip() for p in text.split(",")):
        if i == 0 and part in RECIPES:
            recipe = RECIPES[part]
        elif part in ("no_post", "no_2x", "no_4x"):
            recipe = dataclasses.replace(recipe, **{{"no_post": "post", "no_2x": "history_2x",
                                                     "no_4x": "history_4x"}[part]: False})
        elif part.startswith(("target_index=", "control_index=")):
            name, _, value = part.partition("=")
            try:
                numbers = [int(v) for v in value.split(";")]
            except ValueError:
                raise ValueError(f"one-frame option {part!r}: expected integers (control_index=0;10)") from None
            if name == "target_index":
                if len(numbers) != 1:
                    raise ValueError(f"one-frame option {part!r}: one target index")
                recipe = dataclasses.replace(recipe, target_index=numbers[0])
            else:
                recipe = dataclasses.replace(recipe, control_indices=tuple(numbers))
        else:
            raise ValueError(f"unknown one-frame option {part!r}; expected a recipe ({', '.join(RECIPES)}), "
                             "target_index=N, control_index=N;M, no_post, no_2x or no_4x")
    return recipe


def check_recipe(recipe, num_controls, latent_window_size):
    """ValueError naming the culprit: negative indices, or control_indices not one per control image."""
    if not isinstance(recipe, OneFrameRecipe):
        raise ValueError(f"recipe must be a OneFrameRecipe, a name of {tuple(RECIPES)} or an option string, got "
                         f"{recipe!r:.60}")
    target = latent_window_size if recipe.target_index is None else recipe.target_index
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ValueError(f"target_index must be an int >= 0, got {recipe.target_index!r}")
    if recipe.control_indices is not None:
        if len(recipe.control_indices) != max(num_controls, 1):
            raise ValueError(f"{len(recipe.control_indices)} control indices for {num_controls} control images: give "
                             "one index per control image")
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in recipe.control_indices):
            raise ValueError(f"control indices must be ints >= 0, got {recipe.control_indices}")
    return target


def one_frame_inputs(control_latents, masks, latent_window_size, recipe):
    """The transformer's frame inputs for one frame (module docstring).

    control_latents: [(B, C, 1, h, w) float32] (may be empty); masks: per control None or (1, 1, 1, h, w) in [0, 1]
    -> dict(indices_latents (1,), latents_clean (B, C, n, h, w), indices_latents_clean (n,), latents_history_2x,
    indices_latents_history_2x, latents_history_4x, indices_latents_history_4x) (the histories None when off)."""
    W = latent_window_size
    target = check_recipe(recipe, len(control_latents), W)
    if not control_latents:
        raise ValueError("one_frame_inputs needs the control latents (a zero latent for none is made by the caller)")
    B, C, _, h, w = control_latents[0].shape
    clean = [lat if m is None else lat * m for lat, m in zip(control_latents, masks)]
    indices = list(recipe.control_indices) if recipe.control_indices is not None else [0] * len(clean)
    if recipe.post:
        clean.append(torch.zeros(B, C, 1, h, w, device=control_latents[0].device))
        indices.append(1 + W)
    zeros = lambda n: torch.zeros(B, C, n, h, w, device=control_latents[0].device)  # noqa: E731
    n2, n4 = HISTORY_SIZES[1], HISTORY_SIZES[2]
    return dict(
        indices_latents=torch.tensor([target]), latents_clean=torch.cat(clean, dim=2),
        indices_latents_clean=torch.tensor(indices),
        latents_history_2x=zeros(n2) if recipe.history_2x else None,
        indices_latents_history_2x=torch.arange(W + 2, W + 2 + n2) if recipe.history_2x else None,
        latents_history_4x=zeros(n4) if recipe.history_4x else None,
        indices_latents_history_4x=torch.arange(W + 2 + n2, W + 2 + n2 + n4) if recipe.history_4x else None)


def _grey(mask):
    """A mask picture -> (H, W) uint8."""
    if isinstance(mask, (str, PIL.Image.Image)) or hasattr(mask, "__fspath__"):
        try:
            image = mask if isinstance(mask, PIL.Image.Image) else PIL.Image.open(mask)
            return np.asarray(image.convert("L")).copy()
        except (OSError, ValueError) as e:
            raise ValueError(f"{mask}: cannot read the mask ({e})") from None
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask array must be (H, W), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all() or array.min() < 0 \
            or array.max() > 1:
        raise ValueError("a float mask must be finite and in [0, 1]")
    return (array * 255).round().astype(np.uint8)


def alpha_of(image):
    """The alpha channel (H, W) uint8 of a path or PIL image that has one, else None."""
    try:
        picture = image if isinstance(image, PIL.Image.Image) else PIL.Image.open(image) \
            if isinstance(image, str) or hasattr(image, "__fspath__") else None
    except (OSError, ValueError):
        return None
    if picture is None or "A" not in picture.getbands():
        return None
    return np.asarray(picture.getchannel("A")).copy()


def latent_mask(mask, image_size, height, width, fit, spatial_ratio=8):
    """A mask of the control image's size (H0, W0) -> (1, 1, 1, height / 8, width / 8) float32 in [0, 1]."""
    grey = _grey(mask)
    if grey.shape != tuple(image_size):
        raise ValueError(f"the mask is {grey.shape[0]} x {grey.shape[1]} but its control image is {image_size[0]} x "
                         f"{image_size[1]}: a mask must match its image")
    if fit == "crop":
        grey = center_crop_uint8(np.repeat(grey[..., None], 3, axis=2), height, width)[..., 0]
    else:
        grey = np.asarray(PIL.Image.fromarray(grey).resize((width, height), PIL.Image.BILINEAR))
    small = PIL.Image.fromarray(grey).resize((width // spatial_ratio, height // spatial_ratio), PIL.Image.LANCZOS)
    return torch.from_numpy(np.asarray(small).astype(np.float32) / 255.0)[None, None, None]


def image_size_of(image):
    picture = load_image(image)
    return (picture.height, picture.width) if isinstance(picture, PIL.Image.Image) else tuple(picture.shape[-2:])


@torch.no_grad()
def generate_one_frame(pipe, image, prompt, *, control_images=None, control_masks=None, recipe="default",
                       preset="official", negative_prompt=None, resolution=640, height=None, width=None,
                       latent_window_size=9, num_inference_steps=25, guidance_scale=10.0, true_cfg_scale=1.0,
                       guidance_rescale=0.0, generator=None, sampler=None, output_type="pt", callback=None):
    """FramePackPipeline.one_frame: one frame (B, 1, 3, H, W) in [0, 1] by the recipe of the module docstring.

    image: the start image (its SigLIP embedding; the bucket's aspect); control_images: None = [image], [] = none
    (one zero latent); control_masks: None or one per control (None entries: the image's alpha, if any); recipe: a
    OneFrameRecipe, a name of RECIPES or musubi's option string (parse_recipe). Posterior draws: the start image,
    then each control image in order. Other arguments as FramePackPipeline.__call__ (prompt: a plain string or a
    batch); output_type "pt" | "uint8" | "np" | "pil" | "latent" ((B, C, 1, h, w)).
    """
    import contextlib
    import math

    from framepack_native.arguments import check_arguments, image_size
    from framepack_native.conditioning import prompt_schedule_of
    from framepack_native.offload import streamed_blocks
    from framepack_native.frames import to_uint8, to_unit
    from framepack_native.image import nearest_bucket
    from framepack_native.noise import randn
    from framepack_native.presets import get_preset, second_generator
    from framepack_native.sampling import flow_sigmas, flux_sigmas, shift_mu
    from framepack_native.section_loop import Sampling, SectionInputs, guided_velocity, sample, unscale

    if output_type not in ("pt", "uint8", "np", "pil", "latent"):
        raise ValueError(f"unknown output_type {output_type!r}")
    p = get_preset(preset)
    sampler = sampler or p.sampler
    recipe = parse_recipe(recipe) if isinstance(recipe, str) else recipe
    if prompt_schedule_of(prompt) is not None:  # (also refuses what is no prompt at all)
        raise ValueError("one-frame generation takes a plain prompt (or a batch of them), not a timestamped one")
    for name, value in (("guidance_scale", guidance_scale), ("true_cfg_scale", true_cfg_scale),
                        ("guidance_rescale", guidance_rescale)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    check_arguments(prompt, None, height, width, 1, latent_window_size, num_inference_steps,
                    "inverted_anti_drifting", sampler, None, negative_prompt)
    controls = [image] if control_images is None else list(control_images)
    check_recipe(recipe, len(controls), latent_window_size)
    if control_masks is not None and len(control_masks) != len(controls):
        raise ValueError(f"{len(control_masks)} control masks for {len(controls)} control images: one per image "
                         "(None for no mask)")
    if height is None:
        height, width = nearest_bucket(*image_size(image), resolution)
    masks = []
    for i, control in enumerate(controls):
        mask = control_masks[i] if control_masks is not None else None
        mask = alpha_of(control) if mask is None else mask
        try:
            masks.append(None if mask is None else latent_mask(mask, image_size_of(control), height, width,
                                                               p.image_fit, pipe.vae.config.spatial_compression_ratio))
        except ValueError as e:
            raise ValueError(f"control image {i}: {e}") from None
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    B, dtype, device = len(prompts), pipe.transformer_dtype, pipe.device
    if abs(guidance_scale) * 1000 > torch.finfo(dtype).max:
        raise ValueError(f"guidance_scale {guidance_scale:g} x 1000 overflows the transformer's {dtype}")
    if negative_prompt is None:
        negative_prompt = p.cfg_negative
    do_cfg = negative_prompt is not None and (true_cfg_scale != 1 if p.app_numerics else true_cfg_scale > 1)
    if generator is None and p.seed is not None:
        generator = torch.Generator().manual_seed(p.seed)
    posterior = second_generator(generator) if p.posterior == "second_generator" else generator

    txt, mask, pooled = pipe._encode_text(prompts, dtype)
    neg = None
    if do_cfg:
        negs = [negative_prompt] * B if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negs) != B:
            raise ValueError(f"{len(negs)} negative prompts for {B} prompts")
        neg = pipe._encode_text(negs, dtype)

    def encode(picture):
        return pipe._encode_image(picture, B, height, width, posterior, dtype, p.image_fit)
    image_embeds, _ = encode(image)
    r = pipe.vae.config.spatial_compression_ratio
    h, w = height // r, width // r
    latents = [encode(c)[1] for c in controls] or [torch.zeros(B, pipe.transformer.config.in_channels, 1, h, w,
                                                               device=device)]
    masks = [None if m is None else m.to(device) for m in masks] or [None]
    frame = one_frame_inputs(latents, masks, latent_window_size, recipe)
    context = {k: (v.to(dtype) if v is not None and v.is_floating_point() else v) for k, v in frame.items()}
    if p.app_numerics:
        guidance = torch.full((B,), guidance_scale * 1000.0, device=device).to(dtype)
    else:
        guidance = torch.full((B,), guidance_scale, dtype=dtype, device=device) * 1000.0
    seq_len = h * w / pipe.transformer.config.patch_size**2  # a window of one latent frame
    if p.schedule == "resolution":
        sigmas = flux_sigmas(num_inference_steps, shift_mu(seq_len)).to(device)
    else:
        sigmas = flow_sigmas(num_inference_steps, pipe.scheduler, mu=shift_mu(seq_len, pipe.scheduler)).to(device)
    sampling = Sampling(sigmas, sampler, num_inference_steps, guidance, true_cfg_scale, guidance_rescale,
                        p.app_numerics, None, "inverted_anti_drifting", height, width, 1, dtype)
    cond = SectionInputs(txt, mask, pooled, neg, image_embeds, None, prompt)
    context.update(image_embeds=image_embeds, guidance=guidance)
    noise = randn((B, pipe.transformer.config.in_channels, 1, h, w), generator, device)

    def on_step(d):
        if callback is not None:
            callback({"kind": "step", "section": 0, "sections": 1, "step": d["i"], "steps": num_inference_steps,
                      "latents": d["x"], "denoised": d["denoised"], "preview": None})
    streamed = streamed_blocks(pipe.transformer, device) if pipe.offload else contextlib.nullcontext()
    with streamed:  # as the section loop: block by block under offload
        out = sample(sampling, lambda x, sig: guided_velocity(pipe.transformer, x, sig, cond, context, [None, None],
                                                              sampling), noise, on_step)
    if not bool(torch.isfinite(out).all()):
        raise ValueError("the one frame's latents went non-finite (an overflow: lower the guidance, or use bf16 / fp32)")
    if output_type == "latent":
        return out.cpu()
    with pipe._on_device(pipe.vae):
        unit = to_unit(pipe.vae.decode(unscale(pipe.vae, out, p.app_numerics))).cpu()  # (B, 1, 3, H, W)
    if output_type == "pt":
        return unit
    frames = to_uint8(unit)
    if output_type == "uint8":
        return frames
    if output_type == "np":
        return unit.permute(0, 1, 3, 4, 2).numpy()
    return [[PIL.Image.fromarray(f.permute(1, 2, 0).numpy()) for f in video] for video in frames]
