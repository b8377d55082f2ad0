"""diffusers HunyuanVideoFramepackTransformer3DModel (lllyasviel/FramePackI2V_HY, FramePack_F1_I2V_HY_20250503,
saved as HunyuanVideoTransformer3DModelPacked) -> native FramePackTransformer.

Storage changes: q/k/v fused into one qkv Linear per stream (dual blocks, refiner), q/k/v + MLP-in fused into
linear1 (single blocks), and norm_out's (scale, shift) rows swapped to the native (shift, scale) order.
"""
from weights_convert.core import ConversionError, Converter, Rule, source_field

FIELDS = {  # native field: default of diffusers' HunyuanVideoFramepackTransformer3DModel
    "in_channels": 16, "num_attention_heads": 24, "attention_head_dim": 128, "num_layers": 20,
    "num_single_layers": 40, "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 2, "patch_size_t": 1,
    "guidance_embeds": True, "text_embed_dim": 4096, "pooled_projection_dim": 768, "image_proj_dim": 1152,
    "rope_theta": 256.0, "rope_axes_dim": (16, 56, 56),
}


def convert_config(src):
    """Native FramePackTransformerConfig fields from a diffusers config.json; unsupported variants raise."""
    qk_norm = source_field(src, "qk_norm", "rms_norm")
    if qk_norm != "rms_norm":
        raise ConversionError(f"qk_norm {qk_norm!r}: a different query/key norm layer (with other weights); the "
                              "native blocks implement FramePack's and HunyuanVideo's 'rms_norm'")
    # image_condition_type is ignored: the FramePack model only hands it to HunyuanVideoConditionEmbedding, whose
    # "token_replace" embedding its forward discards (`temb, _ = ...`); other values change nothing there.
    for flag in ("has_image_proj", "has_clean_x_embedder"):
        if not source_field(src, flag, False):
            raise ConversionError(f"{flag} is {src.get(flag, False)}: diffusers' FramePack forward calls "
                                  "image_projection and clean_x_embedder unconditionally, so both must be true")
    fields = {name: source_field(src, name, default) for name, default in FIELDS.items()}
    fields["out_channels"] = source_field(src, "out_channels", None, int) or fields["in_channels"]
    fields["rope_axes_dim"] = list(fields["rope_axes_dim"])
    return fields


def _linear(dst, src):
    return Rule(f"{dst}.{{*}}", f"{src}.{{*}}")


def _mlp_embedder(dst, src):
    return [_linear(f"{dst}.in_layer", f"{src}.linear_1"), _linear(f"{dst}.out_layer", f"{src}.linear_2")]


def _fused(dst, srcs):
    return [Rule(f"{dst}.{p}", tuple(f"{s}.{p}" for s in srcs)) for p in ("weight", "bias")]


def rules(cfg):
    """Key map diffusers -> native for a native config dict."""
    ref = "context_embedder.token_refiner.refiner_blocks.{}"
    dual = "transformer_blocks.{}"
    single = "single_transformer_blocks.{}"
    qkv = ("to_q", "to_k", "to_v")
    out = [
        _linear("img_in", "x_embedder.proj"),
        _linear("history_in.proj_1x", "clean_x_embedder.proj"),
        _linear("history_in.proj_2x", "clean_x_embedder.proj_2x"),
        _linear("history_in.proj_4x", "clean_x_embedder.proj_4x"),
        *_mlp_embedder("time_in", "time_text_embed.timestep_embedder"),
        *_mlp_embedder("vector_in", "time_text_embed.text_embedder"),
        _linear("txt_in.in_proj", "context_embedder.proj_in"),
        *_mlp_embedder("txt_in.t_embedder", "context_embedder.time_text_embed.timestep_embedder"),
        *_mlp_embedder("txt_in.c_embedder", "context_embedder.time_text_embed.text_embedder"),
        _linear("txt_in.blocks.{}.norm1", f"{ref}.norm1"),
        *_fused("txt_in.blocks.{}.qkv", [f"{ref}.attn.{x}" for x in qkv]),
        _linear("txt_in.blocks.{}.proj", f"{ref}.attn.to_out.0"),
        _linear("txt_in.blocks.{}.norm2", f"{ref}.norm2"),
        _linear("txt_in.blocks.{}.fc1", f"{ref}.ff.net.0.proj"),
        _linear("txt_in.blocks.{}.fc2", f"{ref}.ff.net.2"),
        _linear("txt_in.blocks.{}.gates", f"{ref}.norm_out.linear"),
        _linear("image_in.up", "image_projection.up"),
        _linear("image_in.down", "image_projection.down"),
        _linear("double_blocks.{}.img_mod.lin", f"{dual}.norm1.linear"),
        _linear("double_blocks.{}.txt_mod.lin", f"{dual}.norm1_context.linear"),
        *_fused("double_blocks.{}.img_attn.qkv", [f"{dual}.attn.{x}" for x in qkv]),
        Rule("double_blocks.{}.img_attn.norm_q.weight", f"{dual}.attn.norm_q.weight"),
        Rule("double_blocks.{}.img_attn.norm_k.weight", f"{dual}.attn.norm_k.weight"),
        _linear("double_blocks.{}.img_attn.proj", f"{dual}.attn.to_out.0"),
        *_fused("double_blocks.{}.txt_attn.qkv", [f"{dual}.attn.add_{x}_proj" for x in "qkv"]),
        Rule("double_blocks.{}.txt_attn.norm_q.weight", f"{dual}.attn.norm_added_q.weight"),
        Rule("double_blocks.{}.txt_attn.norm_k.weight", f"{dual}.attn.norm_added_k.weight"),
        _linear("double_blocks.{}.txt_attn.proj", f"{dual}.attn.to_add_out"),
        _linear("double_blocks.{}.img_mlp.fc1", f"{dual}.ff.net.0.proj"),
        _linear("double_blocks.{}.img_mlp.fc2", f"{dual}.ff.net.2"),
        _linear("double_blocks.{}.txt_mlp.fc1", f"{dual}.ff_context.net.0.proj"),
        _linear("double_blocks.{}.txt_mlp.fc2", f"{dual}.ff_context.net.2"),
        _linear("single_blocks.{}.modulation.lin", f"{single}.norm.linear"),
        *_fused("single_blocks.{}.linear1", [f"{single}.attn.{x}" for x in qkv] + [f"{single}.proj_mlp"]),
        Rule("single_blocks.{}.norm_q.weight", f"{single}.attn.norm_q.weight"),
        Rule("single_blocks.{}.norm_k.weight", f"{single}.attn.norm_k.weight"),
        _linear("single_blocks.{}.linear2", f"{single}.proj_out"),
        Rule("final_layer.modulation.{*}", "norm_out.linear.{*}", op="swap_halves"),
        _linear("final_layer.linear", "proj_out"),
    ]
    if cfg["guidance_embeds"]:
        out += _mlp_embedder("guidance_in", "time_text_embed.guidance_embedder")
    return out


CONVERTER = Converter(
    component="transformer",
    native_class="framepack_native.models.transformer:FramePackTransformer",
    source_classes=("HunyuanVideoFramepackTransformer3DModel", "HunyuanVideoTransformer3DModelPacked"),
    config=convert_config,
    rules=rules,
)
