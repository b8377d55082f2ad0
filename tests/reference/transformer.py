"""Reference builders for the FramePack transformer: diffusers' HunyuanVideoFramepackTransformer3DModel with
perturbed random weights, saved in the layout users download, plus input builders for both sampling modes."""
import json
from pathlib import Path

import safetensors.torch
import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel

from framepack_native.sections import section_frame_indices
from tests.reference.common import perturb_

TINY = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2, num_refiner_layers=1,
            text_embed_dim=24, pooled_projection_dim=12, image_proj_dim=20, rope_axes_dim=(4, 6, 6),
            has_image_proj=True, has_clean_x_embedder=True)
# The real widths of FramePackI2V_HY with 1 dual + 1 single block: ~0.9 B parameters, 3.6 GB in float32.
REAL_WIDTH = dict(num_attention_heads=24, attention_head_dim=128, num_layers=1, num_single_layers=1,
                  num_refiner_layers=2, text_embed_dim=4096, pooled_projection_dim=768, image_proj_dim=1152,
                  rope_axes_dim=(16, 56, 56), in_channels=16, out_channels=16, has_image_proj=True,
                  has_clean_x_embedder=True)
HISTORIES = ("clean", "2x", "4x")


def builder(config, seed=0):
    """build(path) for ReferenceStore: a perturbed random diffusers model saved with save_pretrained."""

    def build(path):
        torch.manual_seed(seed)
        model = HunyuanVideoFramepackTransformer3DModel(**config)
        perturb_(model, seed)
        model.save_pretrained(path, max_shard_size="400MB")  # small shards keep the serialisation copy small
        del model

    return build


def load(path):
    """The saved reference model in float32, built on the meta device and filled strictly (no double memory)."""
    config = json.loads((Path(path) / "config.json").read_text())
    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel.from_config(config)
    state = {}
    for shard in sorted(Path(path).glob("*.safetensors")):
        state.update(safetensors.torch.load_file(shard))
    model.load_state_dict(state, strict=True, assign=True)
    return model.float().eval()


def make_inputs(config, *, text_lens, frames=3, height=6, width=10, sampling="inverted_anti_drifting", padding=0,
                history_sizes=(1, 2, 16), image_tokens=5, histories=HISTORIES, scalar_t=False, seed=0):
    """Random forward inputs with frame indices laid out as diffusers' pipeline does for one section.

    text_lens: valid text tokens per batch row (the text is padded 2 tokens past the longest).
    """
    g = torch.Generator().manual_seed(seed)
    B, C = len(text_lens), config.get("in_channels", 16)
    L = max(text_lens) + 2
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, n in enumerate(text_lens):
        mask[i, :n] = 1
    lat, clean, h2, h4 = section_frame_indices(sampling, frames, padding, history_sizes)
    t = torch.rand(B, generator=g) * 1000
    guidance = 1000 * (1 + 9 * torch.rand(B, generator=g))
    inputs = dict(
        hidden_states=torch.randn(B, C, frames, height, width, generator=g),
        timestep=t[:1].reshape(()) if scalar_t else t,
        encoder_hidden_states=torch.randn(B, L, config["text_embed_dim"], generator=g),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(B, config["pooled_projection_dim"], generator=g),
        image_embeds=torch.randn(B, image_tokens, config["image_proj_dim"], generator=g),
        indices_latents=lat,
        guidance=guidance[:1].reshape(()) if scalar_t else guidance,
    )
    named = {"clean": ("latents_clean", "indices_latents_clean", clean),
             "2x": ("latents_history_2x", "indices_latents_history_2x", h2),
             "4x": ("latents_history_4x", "indices_latents_history_4x", h4)}
    for scale in histories:
        latents_name, indices_name, indices = named[scale]
        inputs[latents_name] = torch.randn(B, C, len(indices), height, width, generator=g)
        inputs[indices_name] = indices
    return inputs


@torch.no_grad()
def reference_forward(model, inputs):
    """diffusers' forward, also when some histories are absent and with scalar timestep / guidance.

    Its forward needs all three histories (an absent one leaves a rotary table unbound), so absent ones are
    filled with dummies and dropped where diffusers packs the histories, which skips None entries.
    """
    full = dict(inputs)
    absent = []
    B, C, _, H, W = inputs["hidden_states"].shape
    for name in ("timestep", "guidance"):  # diffusers takes (B,) only
        if full.get(name) is not None:
            full[name] = full[name].expand(B)
    for i, name in enumerate(("latents_clean", "latents_history_2x", "latents_history_4x")):
        if full.get(name) is None:
            absent.append(i)
            full[name] = torch.zeros(B, C, 1, H, W)
            full["indices_" + name] = torch.zeros(1, dtype=torch.long)
    if not absent:
        return model(**full, return_dict=False)[0]
    pack = model._pack_history_states

    def pack_present(hidden_states, *args):
        histories = list(args[:3])
        for i in absent:
            histories[i] = None
        return pack(hidden_states, *histories, *args[3:])

    model._pack_history_states = pack_present
    try:
        return model(**full, return_dict=False)[0]
    finally:
        del model._pack_history_states
