"""transformers LlamaModel (HunyuanVideo's text_encoder, llava-llama-3-8b) -> native LlamaTextEncoder.

q/k/v fuse into one projection, gate/up into another. LlamaForCausalLM folders ("model." prefix) also
convert; their LM head is dropped.
"""
from weights_convert.core import ConversionError, Converter, Drop, Rule


def convert_config(src):
    """Native LlamaConfig fields from a transformers Llama config.json (v4 rope_scaling or v5 rope_parameters)."""
    if src.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"Llama hidden_act {src['hidden_act']!r} is not supported (only 'silu')")
    heads = src["num_attention_heads"]
    rope = dict(src.get("rope_parameters") or {})
    scaling = src.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    params = {**scaling, **rope}
    fields = dict(
        vocab_size=src["vocab_size"],
        hidden_size=src["hidden_size"],
        intermediate_size=src["intermediate_size"],
        num_hidden_layers=src["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=src.get("num_key_value_heads") or heads,
        head_dim=src.get("head_dim") or src["hidden_size"] // heads,
        rms_norm_eps=src.get("rms_norm_eps", 1e-6),
        rope_theta=float(params.get("rope_theta", src.get("rope_theta", 10000.0))),
        rope_type=rope_type,
        attention_bias=bool(src.get("attention_bias", False)),
        mlp_bias=bool(src.get("mlp_bias", False)),
    )
    if rope_type == "llama3":
        fields.update(
            rope_factor=float(params["factor"]),
            rope_low_freq_factor=float(params["low_freq_factor"]),
            rope_high_freq_factor=float(params["high_freq_factor"]),
            rope_original_max_position_embeddings=int(
                params.get("original_max_position_embeddings", src.get("max_position_embeddings", 8192))),
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
