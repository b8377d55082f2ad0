"""transformers LlamaModel (HunyuanVideo's text_encoder, llava-llama-3-8b) -> native LlamaTextEncoder.

q/k/v fuse into one projection, gate/up into another. LlamaForCausalLM folders ("model." prefix) also
convert; their LM head is dropped.
"""
from weights_convert.core import ConversionError, Converter, Drop, Rule, source_field


def convert_config(src):
    """Native LlamaConfig fields from a transformers Llama config.json (v4 rope_scaling or v5 rope_parameters)."""
    if source_field(src, "hidden_act", "silu") != "silu":
        raise ConversionError(f"Llama hidden_act {src['hidden_act']!r} is not supported (only 'silu')")
    hidden, heads = source_field(src, "hidden_size", kind=int), source_field(src, "num_attention_heads", kind=int)
    rope = source_field(src, "rope_parameters", None, dict) or {}
    scaling = source_field(src, "rope_scaling", None, dict) or {}
    params = {**scaling, **rope}
    rope_type = source_field(params, "rope_type", None, str) or source_field(params, "type", None, str) or "default"
    fields = dict(
        vocab_size=source_field(src, "vocab_size", kind=int),
        hidden_size=hidden,
        intermediate_size=source_field(src, "intermediate_size", kind=int),
        num_hidden_layers=source_field(src, "num_hidden_layers", kind=int),
        num_attention_heads=heads,
        num_key_value_heads=source_field(src, "num_key_value_heads", None, int) or heads,
        head_dim=source_field(src, "head_dim", None, int) or hidden // max(heads, 1),
        rms_norm_eps=source_field(src, "rms_norm_eps", 1e-6),
        rope_theta=float(source_field(params, "rope_theta", source_field(src, "rope_theta", 10000.0))),
        rope_type=rope_type,
        attention_bias=source_field(src, "attention_bias", False),
        mlp_bias=source_field(src, "mlp_bias", False),
    )
    if rope_type == "llama3":
        fields.update(
            rope_factor=float(source_field(params, "factor", kind=float)),
            rope_low_freq_factor=float(source_field(params, "low_freq_factor", kind=float)),
            rope_high_freq_factor=float(source_field(params, "high_freq_factor", kind=float)),
            rope_original_max_position_embeddings=source_field(
                params, "original_max_position_embeddings", source_field(src, "max_position_embeddings", 8192)),
        )
    elif rope_type != "default":
        raise ConversionError(f"Llama rope type {rope_type!r} is not supported (only 'default' and 'llama3')")
    return fields


def rules(cfg):
    out = [Drop("lm_head.weight")]
    for p in ("", "model."):
        layer = f"{p}layers.{{}}"
        out += [
            Rule("embed.weight", f"{p}embed_tokens.weight"),
            Rule("layers.{}.attn_norm.weight", f"{layer}.input_layernorm.weight"),
            Rule("layers.{}.attn.qkv.weight", tuple(f"{layer}.self_attn.{x}_proj.weight" for x in "qkv")),
            Rule("layers.{}.attn.out.weight", f"{layer}.self_attn.o_proj.weight"),
            Rule("layers.{}.mlp_norm.weight", f"{layer}.post_attention_layernorm.weight"),
            Rule("layers.{}.mlp.gate_up.weight", (f"{layer}.mlp.gate_proj.weight", f"{layer}.mlp.up_proj.weight")),
            Rule("layers.{}.mlp.down.weight", f"{layer}.mlp.down_proj.weight"),
            Rule("norm.weight", f"{p}norm.weight"),
            Drop(f"{layer}.self_attn.rotary_emb.inv_freq"),   # stored by old transformers versions
        ]
        if cfg.get("attention_bias"):
            out += [Rule("layers.{}.attn.qkv.bias", tuple(f"{layer}.self_attn.{x}_proj.bias" for x in "qkv")),
                    Rule("layers.{}.attn.out.bias", f"{layer}.self_attn.o_proj.bias")]
        if cfg.get("mlp_bias"):
            out += [Rule("layers.{}.mlp.gate_up.bias", (f"{layer}.mlp.gate_proj.bias", f"{layer}.mlp.up_proj.bias")),
                    Rule("layers.{}.mlp.down.bias", f"{layer}.mlp.down_proj.bias")]
    return out


CONVERTER = Converter(
    component="text_encoder",
    native_class="framepack_native.models.llama:LlamaTextEncoder",
    source_classes=("LlamaModel", "LlamaForCausalLM"),
    config=convert_config,
    rules=rules,
    model_types=("llama",),
)
