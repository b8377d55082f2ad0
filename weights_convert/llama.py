"""transformers LlamaModel (HunyuanVideo's text_encoder, llava-llama-3-8b) -> native LlamaTextEncoder.

q/k/v fuse into one projection, gate/up into another. LlamaForCausalLM folders ("model." prefix) also
convert; their LM head is dropped.
"""
import math

from framepack_native.models.activations import check_activation
from weights_convert.core import ConversionError, Converter, Drop, Rule, source_field

# Fields of a Llama config.json read nowhere below, and why they do not change LlamaModel's hidden states:
# initializer_range (initialisation only), use_cache, pad_token_id (nn.Embedding's padding_idx only zeroes that
# row's gradient), bos/eos_token_id (the tokenizer's), attention_dropout (eval mode), tie_word_embeddings and
# pretraining_tp (the LM head, which is dropped; transformers 5 ignores pretraining_tp, v4's split matmuls are
# the same sums), max_position_embeddings (no length limit in LlamaModel; read for the rope types that use it).


def _rope(src, head_dim):
    """The native rope_* fields, as transformers 5 standardises rope_scaling / rope_parameters / rope_theta."""
    # A v4 rope_scaling replaces rope_parameters wholesale (RotaryEmbeddingConfigMixin.convert_rope_params_to_dict).
    params = dict(source_field(src, "rope_scaling", None, dict) or source_field(src, "rope_parameters", None, dict)
                  or {})
    rope_type = source_field(params, "rope_type", None, str) or source_field(params, "type", None, str) or "default"
    theta = float(source_field(params, "rope_theta", source_field(src, "rope_theta", 10000.0)))
    max_len = source_field(src, "max_position_embeddings", 2048)
    partial = float(source_field(params, "partial_rotary_factor", source_field(src, "partial_rotary_factor", 1.0)))
    fields = dict(rope_type=rope_type, rope_theta=theta)
    if rope_type == "default":
        return fields  # transformers' default init rotates the full head_dim whatever partial_rotary_factor says
    if rope_type == "proportional":
        return dict(fields, rope_factor=float(source_field(params, "factor", 1.0)), rope_partial_factor=partial)
    if int(head_dim * partial) != head_dim:
        raise ConversionError(f"Llama partial_rotary_factor {partial} with rope type {rope_type!r}: transformers' "
                              f"LlamaModel rotates all {head_dim} dims of a head, so it fails on this config too")
    # A top-level original_max_position_embeddings (Phi-3 style) is set after LlamaConfig standardises its rope:
    # transformers' Llama does not read it.
    original = source_field(params, "original_max_position_embeddings", max_len)
    if rope_type in ("linear", "dynamic"):
        return dict(fields, rope_factor=float(source_field(params, "factor", kind=float)),
                    rope_original_max_position_embeddings=max_len if rope_type == "dynamic" else original)
    if rope_type == "llama3":
        return dict(fields, rope_factor=float(source_field(params, "factor", kind=float)),
                    rope_low_freq_factor=float(source_field(params, "low_freq_factor", kind=float)),
                    rope_high_freq_factor=float(source_field(params, "high_freq_factor", kind=float)),
                    rope_original_max_position_embeddings=original)
    factor = source_field(params, "factor", None, float)
    factor = float(max_len / original if factor is None else factor)
    attention = source_field(params, "attention_factor", None, float)
    if rope_type == "yarn":
        if attention is None:  # transformers' _compute_yarn_parameters defaults
            def mscale(scale, m=1):
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
            m, m_all = source_field(params, "mscale", None, float), source_field(params, "mscale_all_dim", None, float)
            attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
        return dict(fields, rope_factor=factor, rope_original_max_position_embeddings=original,
                    rope_attention_factor=float(attention),
                    rope_beta_fast=float(source_field(params, "beta_fast", None, float) or 32),
                    rope_beta_slow=float(source_field(params, "beta_slow", None, float) or 1),
                    rope_truncate=source_field(params, "truncate", True))
    if rope_type == "longrope":
        if attention is None:  # transformers' _compute_longrope_parameters default
            attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
        return dict(fields, rope_factor=factor, rope_original_max_position_embeddings=original,
                    rope_attention_factor=float(attention),
                    rope_short_factor=[float(x) for x in source_field(params, "short_factor", kind=(float,))],
                    rope_long_factor=[float(x) for x in source_field(params, "long_factor", kind=(float,))])
    raise ConversionError(f"Llama rope type {rope_type!r}: transformers has no such rotary embedding (it knows "
                          "default, linear, dynamic, llama3, yarn, longrope, proportional)")


def convert_config(src):
    """Native LlamaConfig fields from a transformers Llama config.json (v4 rope_scaling or v5 rope_parameters)."""
    act = check_activation(source_field(src, "hidden_act", "silu"), "Llama hidden_act", ConversionError)
    hidden, heads = source_field(src, "hidden_size", kind=int), source_field(src, "num_attention_heads", kind=int)
    head_dim = source_field(src, "head_dim", None, int) or hidden // max(heads, 1)
    return dict(
        vocab_size=source_field(src, "vocab_size", kind=int),
        hidden_size=hidden,
        intermediate_size=source_field(src, "intermediate_size", kind=int),
        num_hidden_layers=source_field(src, "num_hidden_layers", kind=int),
        num_attention_heads=heads,
        num_key_value_heads=source_field(src, "num_key_value_heads", None, int) or heads,
        head_dim=head_dim,
        rms_norm_eps=source_field(src, "rms_norm_eps", 1e-6),
        attention_bias=source_field(src, "attention_bias", False),
        mlp_bias=source_field(src, "mlp_bias", False),
        hidden_act=act,
        **_rope(src, head_dim),
    )


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
