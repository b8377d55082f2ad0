"""transformers CLIPTextModel (HunyuanVideo's text_encoder_2) -> native CLIPTextEncoder.

Hub checkpoints carry a "text_model." prefix, transformers 5 saves without it: both convert.
"""
from weights_convert.core import Converter, Drop, Rule, source_field


def block_rules(layer):
    """Rules for the pre-LN encoder blocks shared by CLIP and SigLIP; `layer` is the source "…layers.{}"."""
    attn = f"{layer}.self_attn"
    return [
        Rule("layers.{}.norm1.{*}", f"{layer}.layer_norm1.{{*}}"),
        Rule("layers.{}.qkv.weight", tuple(f"{attn}.{x}_proj.weight" for x in "qkv")),
        Rule("layers.{}.qkv.bias", tuple(f"{attn}.{x}_proj.bias" for x in "qkv")),
        Rule("layers.{}.out.{*}", f"{attn}.out_proj.{{*}}"),
        Rule("layers.{}.norm2.{*}", f"{layer}.layer_norm2.{{*}}"),
        Rule("layers.{}.fc1.{*}", f"{layer}.mlp.fc1.{{*}}"),
        Rule("layers.{}.fc2.{*}", f"{layer}.mlp.fc2.{{*}}"),
    ]


DEFAULTS = dict(  # transformers' CLIPTextConfig defaults
    vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407,
)


def convert_config(src):
    """Native CLIPTextConfig fields; missing entries take transformers' CLIPTextConfig defaults."""
    return {name: source_field(src, name, default) for name, default in DEFAULTS.items()}


def rules(cfg):
    out = [Drop("text_projection.weight")]   # CLIPTextModelWithProjection
    for p in ("", "text_model."):
        out += [
            Rule("token_embedding.weight", f"{p}embeddings.token_embedding.weight"),
            Rule("position_embedding", f"{p}embeddings.position_embedding.weight"),
            Drop(f"{p}embeddings.position_ids"),   # a persistent buffer in old transformers versions
            *block_rules(f"{p}encoder.layers.{{}}"),
            Rule("final_norm.{*}", f"{p}final_layer_norm.{{*}}"),
        ]
    return out


CONVERTER = Converter(
    component="text_encoder_2",
    native_class="framepack_native.models.clip:CLIPTextEncoder",
    source_classes=("CLIPTextModel", "CLIPTextModelWithProjection"),
    config=convert_config,
    rules=rules,
    model_types=("clip_text_model",),
)
