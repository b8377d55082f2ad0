"""Reference LoRA files for the FramePack transformer: random factors over diffusers' modules, written in the PEFT,
musubi and original HunyuanVideo keys, and diffusers' own PEFT loading to compare with.

The original-key <-> diffusers correspondence here is written from diffusers' _convert_hunyuan_video_lora_to_diffusers
(and HunyuanVideo's module names), independently of framepack_native.lora_formats, with two fixes: the fused qkv /
linear1 lora_A is shared by every part (diffusers chunks the refiner's self_attn_qkv lora_A and splits single-block
linear1 at a hard-coded 3072 rows), and final_layer.adaLN_modulation.1 swaps only lora_B's row halves (diffusers also
swaps lora_A's rank halves).
"""
import dataclasses

import torch

from framepack_native.weights import save_safetensors

_REF = "txt_in.individual_token_refiner.blocks.{}"
_DREF = "context_embedder.token_refiner.refiner_blocks.{}"
ORIGINAL_TO_DIFFUSERS = {  # original module -> diffusers module (a list: the row blocks of a fused weight)
    "img_in.proj": "x_embedder.proj",
    "time_in.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "time_in.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in.mlp.0": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.mlp.2": "time_text_embed.guidance_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "txt_in.input_embedder": "context_embedder.proj_in",
    "txt_in.t_embedder.mlp.0": "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "txt_in.t_embedder.mlp.2": "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "txt_in.c_embedder.linear_1": "context_embedder.time_text_embed.text_embedder.linear_1",
    "txt_in.c_embedder.linear_2": "context_embedder.time_text_embed.text_embedder.linear_2",
    f"{_REF}.self_attn_qkv": [f"{_DREF}.attn.to_q", f"{_DREF}.attn.to_k", f"{_DREF}.attn.to_v"],
    f"{_REF}.self_attn_proj": f"{_DREF}.attn.to_out.0",
    f"{_REF}.mlp.fc1": f"{_DREF}.ff.net.0.proj",
    f"{_REF}.mlp.fc2": f"{_DREF}.ff.net.2",
    f"{_REF}.adaLN_modulation.1": f"{_DREF}.norm_out.linear",
    "double_blocks.{}.img_attn_qkv": ["transformer_blocks.{}.attn.to_q", "transformer_blocks.{}.attn.to_k",
                                      "transformer_blocks.{}.attn.to_v"],
    "double_blocks.{}.txt_attn_qkv": ["transformer_blocks.{}.attn.add_q_proj", "transformer_blocks.{}.attn.add_k_proj",
                                      "transformer_blocks.{}.attn.add_v_proj"],
    "double_blocks.{}.img_attn_proj": "transformer_blocks.{}.attn.to_out.0",
    "double_blocks.{}.txt_attn_proj": "transformer_blocks.{}.attn.to_add_out",
    "double_blocks.{}.img_mlp.fc1": "transformer_blocks.{}.ff.net.0.proj",
    "double_blocks.{}.img_mlp.fc2": "transformer_blocks.{}.ff.net.2",
    "double_blocks.{}.txt_mlp.fc1": "transformer_blocks.{}.ff_context.net.0.proj",
    "double_blocks.{}.txt_mlp.fc2": "transformer_blocks.{}.ff_context.net.2",
    "double_blocks.{}.img_mod.linear": "transformer_blocks.{}.norm1.linear",
    "double_blocks.{}.txt_mod.linear": "transformer_blocks.{}.norm1_context.linear",
    "single_blocks.{}.linear1": ["single_transformer_blocks.{}.attn.to_q", "single_transformer_blocks.{}.attn.to_k",
                                 "single_transformer_blocks.{}.attn.to_v", "single_transformer_blocks.{}.proj_mlp"],
    "single_blocks.{}.linear2": "single_transformer_blocks.{}.proj_out",
    "single_blocks.{}.modulation.linear": "single_transformer_blocks.{}.norm.linear",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",  # (shift, scale) rows -> diffusers' (scale, shift)
}
# what diffusers' own original-key conversion gets wrong at these sizes (see the module docstring)
DIFFUSERS_MISREADS = ("self_attn_qkv", "single_blocks.{}.linear1")


def diffusers_kwargs(config):
    """diffusers HunyuanVideoFramepackTransformer3DModel arguments for a native FramePackTransformerConfig."""
    fields = dataclasses.asdict(config)
    return dict(fields, rope_axes_dim=tuple(fields["rope_axes_dim"]), has_image_proj=True, has_clean_x_embedder=True)


def module_shapes(diffusers_config):
    """{diffusers module name: weight shape} of every Linear / Conv3d (the modules PEFT can target), built on meta."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel
    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel(**diffusers_config)
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear,
                                                                                          torch.nn.Conv3d))}


def _factors(g, shape, rank, magnitude):
    """A (rank, *in) and B (out, rank, 1...) whose B @ A has entries of about `magnitude`."""
    fan_in = int(torch.tensor(shape[1:]).prod())
    a = torch.randn(rank, *shape[1:], generator=g) / fan_in ** 0.5
    b = torch.randn(shape[0], rank, *[1] * (len(shape) - 2), generator=g) * magnitude / rank ** 0.5
    return a, b


def random_peft(shapes, seed=0, ranks=(2, 3, 4), magnitude=0.05, names=None, prefix="transformer."):
    """{key: tensor} of a PEFT LoRA over `names` (default: every module of `shapes`), ranks cycling through `ranks`."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, name in enumerate(names or shapes):
        a, b = _factors(g, shapes[name], ranks[i % len(ranks)], magnitude)
        out[f"{prefix}{name}.lora_A.weight"], out[f"{prefix}{name}.lora_B.weight"] = a, b
    return out


def peft_to_musubi(peft, alphas):
    """The same LoRA in musubi's keys: lora_unet_<module with _>, alpha[module] stored and B scaled by rank / alpha
    so that (alpha / rank) * B' @ A = B @ A."""
    out = {}
    for key, t in peft.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len("transformer."):-len(".lora_A.weight")]
        base = "lora_unet_" + module.replace(".", "_")
        rank, alpha = t.shape[0], alphas[module]
        out[f"{base}.lora_down.weight"] = t
        out[f"{base}.lora_up.weight"] = peft[key.replace("lora_A", "lora_B")] * (rank / alpha)
        out[f"{base}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def _expand(template, blocks):
    return [template.format(i) for i in range(blocks)] if "{}" in template else [template]


def original_modules(diffusers_config, skip=()):
    """[(original module, [diffusers modules])] of a model, templates containing any of `skip` left out."""
    counts = {"double_blocks": diffusers_config["num_layers"], "single_blocks": diffusers_config["num_single_layers"],
              "txt_in": diffusers_config["num_refiner_layers"]}
    out = []
    for orig, dif in ORIGINAL_TO_DIFFUSERS.items():
        if any(s in orig for s in skip) or (orig.startswith("guidance_in") and not diffusers_config["guidance_embeds"]):
            continue
        parts = dif if isinstance(dif, list) else [dif]
        for i in range(counts[orig.split(".")[0]] if "{}" in orig else 1):
            out.append((orig.format(i), [p.format(i) for p in parts]))
    return out


def random_original(diffusers_config, seed=0, rank=4, magnitude=0.05, skip=(), symmetric_final_a=False):
    """(original-key LoRA, its diffusers PEFT equivalent) over every original module (less `skip`).

    symmetric_final_a: final_layer.adaLN_modulation.1's lora_A with equal rank halves, which diffusers' own loader
    reads right despite swapping them."""
    shapes, g = module_shapes(diffusers_config), torch.Generator().manual_seed(seed)
    original, peft = {}, {}
    for orig, parts in original_modules(diffusers_config, skip):
        fused = (sum(shapes[p][0] for p in parts), *shapes[parts[0]][1:])
        a, b = _factors(g, fused, rank, magnitude)
        if orig == "final_layer.adaLN_modulation.1" and symmetric_final_a:
            a = torch.cat((a[:rank // 2], a[:rank // 2]))
        original[f"{orig}.lora_A.weight"], original[f"{orig}.lora_B.weight"] = a, b
        if orig == "final_layer.adaLN_modulation.1":
            b = torch.cat(b.chunk(2)[::-1])  # (shift, scale) -> (scale, shift)
        for part, rows in zip(parts, b.split([shapes[p][0] for p in parts])):
            peft[f"transformer.{part}.lora_A.weight"], peft[f"transformer.{part}.lora_B.weight"] = a, rows
    return original, peft


def save(path, tensors, metadata=None):
    save_safetensors(path, {k: v.contiguous() for k, v in tensors.items()}, metadata)
    return path


def diffusers_with_lora(model, path, strength=1.0, name="a"):
    """Load a LoRA file into a diffusers FramePack transformer as HunyuanVideoFramepackPipeline.load_lora_weights does
    (its lora_state_dict, original-key conversion included, then load_lora_into_transformer), at `strength` through
    set_adapters."""
    from diffusers import HunyuanVideoFramepackPipeline
    state, metadata = HunyuanVideoFramepackPipeline.lora_state_dict(str(path), return_lora_metadata=True)
    HunyuanVideoFramepackPipeline.load_lora_into_transformer(state, transformer=model, adapter_name=name,
                                                             metadata=metadata)
    if strength != 1.0:
        model.set_adapters([name], [strength])
    return model


def diffusers_fused_native(model, src_config):
    """The native state dict of a diffusers model with its LoRAs fused (weights_convert's in-memory conversion)."""
    from weights_convert.core import convert_state
    from weights_convert.transformer import CONVERTER
    model.fuse_lora()
    model.unload_lora()
    return convert_state(CONVERTER, model.state_dict(), src_config)[1]
