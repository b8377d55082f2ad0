"""The official FramePack app's generation loop as a reference: lllyasviel/FramePack@97fe5db demo_gradio.py `worker()`.

run_official_worker re-states worker() (demo_gradio.py lines 103-315) step by step, calling framepack==0.0.9's own
helpers (encode_prompt_conds, vae_encode, vae_decode, find_nearest_bucket, hf_clip_vision_encode, sample_hunyuan,
resize_and_center_crop, crop_or_pad_yield_mask, soft_append_bcthw). Left out: the GPU offloading, the thread and
progress stream with its preview callback, the mp4 and png writes, TeaCache (use_teacache=False), the catch-all
except (errors propagate). VAE tiling stays off, as in the app's high-VRAM mode (lines 66-68). Everything runs in
float32 on the CPU (the app: bf16 transformer, fp16 encoders and VAE).

framepack's utils.py imports cv2 and torchvision (not installable here), and hunyuan.py and k_diffusion_hunyuan.py
import from it: while those two import, a stub utils module stands in that holds utils' own functions, taken from
its source by name (tests/reference/official.py official_functions).
"""
import contextlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import PIL.Image
import safetensors.torch
import torch

from tests.reference import pipeline as reference_pipeline
from tests.reference.official import official_functions, official_transformer_class

# framepack's code hard-codes 16 latent channels (worker()'s history_latents, sample_hunyuan's noise, the packed
# model's clean-latent embedders), as the real VAE has: the tiny pipeline of tests/reference/pipeline.py with 16
LATENT_CHANNELS = 16
UTILS = ("crop_or_pad_yield_mask", "repeat_to_batch_size", "resize_and_center_crop", "soft_append_bcthw")


def build_official_pipeline(path, seed=0):
    """tests/reference/pipeline.py build_pipeline(layout="pipeline") with LATENT_CHANNELS latent channels."""
    return reference_pipeline.build_pipeline(path, seed=seed, layout="pipeline", latent_channels=LATENT_CHANNELS)


def load_official_models(src):
    """The app's components (demo_gradio.py lines 48-85) from a saved diffusers pipeline folder, float32, eval.

    The transformer is framepack's HunyuanVideoTransformer3DModelPacked holding the weights of the saved diffusers
    HunyuanVideoFramepackTransformer3DModel (the same state-dict keys and shapes), loaded strictly.
    """
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import (CLIPTextModel, CLIPTokenizer, LlamaModel, PreTrainedTokenizerFast,
                              SiglipImageProcessor, SiglipVisionModel)

    src = Path(src)
    f32 = dict(torch_dtype=torch.float32)
    config = json.loads((src / "transformer" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_") and k != "image_condition_type"}
    with torch.device("meta"):
        transformer = official_transformer_class()(**config)
    state = {}
    for shard in sorted((src / "transformer").glob("*.safetensors")):
        state.update(safetensors.torch.load_file(shard))
    transformer.load_state_dict(state, strict=True, assign=True)
    transformer.high_quality_fp32_output_for_inference = True  # demo_gradio.py line 70
    models = dict(
        text_encoder=LlamaModel.from_pretrained(src / "text_encoder", **f32),
        text_encoder_2=CLIPTextModel.from_pretrained(src / "text_encoder_2", **f32),
        # the app's LlamaTokenizerFast would tokenize wrongly here: see tests/reference/pipeline.py load_pipeline
        tokenizer=PreTrainedTokenizerFast.from_pretrained(src / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(src / "tokenizer_2"),
        vae=AutoencoderKLHunyuanVideo.from_pretrained(src / "vae", **f32),
        feature_extractor=SiglipImageProcessor.from_pretrained(src / "feature_extractor"),
        image_encoder=SiglipVisionModel.from_pretrained(src / "image_encoder", **f32),
        transformer=transformer.float(),
    )
    for model in models.values():
        if isinstance(model, torch.nn.Module):
            model.eval().requires_grad_(False)
    return models


@contextlib.contextmanager
def _stub_utils(functions):
    """framepack.diffusers_helper.utils as a module holding only `functions`, while the block runs."""
    name = "framepack.diffusers_helper.utils"
    stub = types.ModuleType(name)
    stub.__dict__.update(functions)
    saved = sys.modules.get(name)
    sys.modules[name] = stub
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved


def official_helpers():
    """{name: function}: the framepack==0.0.9 helpers worker() calls."""
    utils = official_functions("framepack.diffusers_helper.utils", UTILS)
    utils["resize_and_center_crop"].__globals__.update(np=np, Image=PIL.Image)  # the names utils.py imports
    with _stub_utils(utils):
        from framepack.diffusers_helper import hunyuan
        from framepack.diffusers_helper.pipelines import k_diffusion_hunyuan
    from framepack.diffusers_helper.bucket_tools import find_nearest_bucket
    from framepack.diffusers_helper.clip_vision import hf_clip_vision_encode
    return dict(utils, encode_prompt_conds=hunyuan.encode_prompt_conds, vae_encode=hunyuan.vae_encode,
                vae_decode=hunyuan.vae_decode, sample_hunyuan=k_diffusion_hunyuan.sample_hunyuan,
                find_nearest_bucket=find_nearest_bucket, hf_clip_vision_encode=hf_clip_vision_encode)


@torch.no_grad()
def run_official_worker(models, input_image, prompt, n_prompt, seed, total_second_length, latent_window_size, steps,
                        cfg, gs, rs, size=None):
    """demo_gradio.py worker() in float32 on the CPU; returns history_pixels (1, 3, F, H, W) in [-1, 1].

    input_image: (H, W, 3) uint8, as gradio gives it. size: (height, width) replacing find_nearest_bucket's choice;
    the app has no such option (it is here to test a non-bucket size).
    """
    f = official_helpers()
    m = models
    transformer, vae = m["transformer"], m["vae"]
    # lines 104-105
    total_latent_sections = (total_second_length * 30) / (latent_window_size * 4)
    total_latent_sections = int(max(round(total_latent_sections), 1))
    # lines 126-134
    encode = (m["text_encoder"], m["text_encoder_2"], m["tokenizer"], m["tokenizer_2"])
    llama_vec, clip_l_pooler = f["encode_prompt_conds"](prompt, *encode)
    if cfg == 1:
        llama_vec_n, clip_l_pooler_n = torch.zeros_like(llama_vec), torch.zeros_like(clip_l_pooler)
    else:
        llama_vec_n, clip_l_pooler_n = f["encode_prompt_conds"](n_prompt, *encode)
    llama_vec, llama_attention_mask = f["crop_or_pad_yield_mask"](llama_vec, length=512)
    llama_vec_n, llama_attention_mask_n = f["crop_or_pad_yield_mask"](llama_vec_n, length=512)
    # lines 140-147
    H, W, C = input_image.shape
    height, width = f["find_nearest_bucket"](H, W, resolution=640) if size is None else size
    input_image_np = f["resize_and_center_crop"](input_image, target_width=width, target_height=height)
    input_image_pt = torch.from_numpy(input_image_np).float() / 127.5 - 1
    input_image_pt = input_image_pt.permute(2, 0, 1)[None, :, None]
    # line 156: the app samples the posterior from torch's global RNG (not reproducible from its seed); ours
    # (preset="official") draws it from a generator seeded initial_seed + 1: seeding the global RNG so lines them up
    torch.manual_seed((seed + 1) % 2**64)
    start_latent = f["vae_encode"](input_image_pt, vae)
    # lines 165-174
    image_encoder_last_hidden_state = f["hf_clip_vision_encode"](
        input_image_np, m["feature_extractor"], m["image_encoder"]).last_hidden_state
    llama_vec, llama_vec_n = llama_vec.to(transformer.dtype), llama_vec_n.to(transformer.dtype)
    clip_l_pooler, clip_l_pooler_n = clip_l_pooler.to(transformer.dtype), clip_l_pooler_n.to(transformer.dtype)
    image_encoder_last_hidden_state = image_encoder_last_hidden_state.to(transformer.dtype)
    # lines 180-194
    rnd = torch.Generator("cpu").manual_seed(seed)
    num_frames = latent_window_size * 4 - 3
    history_latents = torch.zeros(size=(1, 16, 1 + 2 + 16, height // 8, width // 8), dtype=torch.float32)
    history_pixels = None
    total_generated_latent_frames = 0
    latent_paddings = reversed(range(total_latent_sections))
    if total_latent_sections > 4:
        latent_paddings = [3] + [2] * (total_latent_sections - 3) + [1, 0]
    for latent_padding in latent_paddings:  # lines 196-306
        is_last_section = latent_padding == 0
        latent_padding_size = latent_padding * latent_window_size
        split = [1, latent_padding_size, latent_window_size, 1, 2, 16]
        indices = torch.arange(0, sum(split)).unsqueeze(0)
        (clean_latent_indices_pre, blank_indices, latent_indices, clean_latent_indices_post, clean_latent_2x_indices,
         clean_latent_4x_indices) = indices.split(split, dim=1)
        clean_latent_indices = torch.cat([clean_latent_indices_pre, clean_latent_indices_post], dim=1)
        clean_latents_pre = start_latent.to(history_latents)
        clean_latents_post, clean_latents_2x, clean_latents_4x = history_latents[:, :, :1 + 2 + 16].split([1, 2, 16],
                                                                                                        dim=2)
        clean_latents = torch.cat([clean_latents_pre, clean_latents_post], dim=2)
        transformer.initialize_teacache(enable_teacache=False)
        generated_latents = f["sample_hunyuan"](  # lines 241-270; device and dtype: the CPU and float32 here
            transformer=transformer, sampler="unipc", width=width, height=height, frames=num_frames,
            real_guidance_scale=cfg, distilled_guidance_scale=gs, guidance_rescale=rs, num_inference_steps=steps,
            generator=rnd, prompt_embeds=llama_vec, prompt_embeds_mask=llama_attention_mask,
            prompt_poolers=clip_l_pooler, negative_prompt_embeds=llama_vec_n,
            negative_prompt_embeds_mask=llama_attention_mask_n, negative_prompt_poolers=clip_l_pooler_n,
            device=torch.device("cpu"), dtype=torch.float32, image_embeddings=image_encoder_last_hidden_state,
            latent_indices=latent_indices, clean_latents=clean_latents, clean_latent_indices=clean_latent_indices,
            clean_latents_2x=clean_latents_2x, clean_latent_2x_indices=clean_latent_2x_indices,
            clean_latents_4x=clean_latents_4x, clean_latent_4x_indices=clean_latent_4x_indices)
        if is_last_section:
            generated_latents = torch.cat([start_latent.to(generated_latents), generated_latents], dim=2)
        total_generated_latent_frames += int(generated_latents.shape[2])
        history_latents = torch.cat([generated_latents.to(history_latents), history_latents], dim=2)
        real_history_latents = history_latents[:, :, :total_generated_latent_frames]
        if history_pixels is None:
            history_pixels = f["vae_decode"](real_history_latents, vae).cpu()
        else:
            section_latent_frames = (latent_window_size * 2 + 1) if is_last_section else (latent_window_size * 2)
            overlapped_frames = latent_window_size * 4 - 3
            current_pixels = f["vae_decode"](real_history_latents[:, :, :section_latent_frames], vae).cpu()
            history_pixels = f["soft_append_bcthw"](current_pixels, history_pixels, overlapped_frames)
        if is_last_section:
            break
    return history_pixels
