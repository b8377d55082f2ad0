"""transformers CLIPTextModel (HunyuanVideo's text_encoder_2) -> native CLIPTextEncoder.

Hub checkpoints carry a "text_model." prefix, transformers 5 saves without it: both convert.
"""
from framepack_native.models.activations import check_activation
from weights_convert.core import ConversionError, Converter, Drop, Rule, source_field


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


# Read nowhere, without effect on CLIPTextModel's outputs: projection_dim (CLIPTextModelWithProjection's
# text_projection, dropped), attention_dropout (eval mode), initializer_range / initializer_factor (initialisation),
# pad_token_id / bos_token_id (the tokenizer's; the embedding has no padding_idx).


def convert_config(src):
    """Native CLIPTextConfig fields; missing entries take transformers' CLIPTextConfig defaults."""
    eos = src.get("eos_token_id")
    if isinstance(eos, list):  # CLIPTextConfig allows it, but `input_ids == [..]` is False: the pooling fails
        raise ConversionError(f"CLIP eos_token_id {eos}: CLIPTextModel pools at one end token id and fails on a "
                              "list (its `input_ids == eos_token_id` is then a bool)")
    fields = {name: source_field(src, name, default) for name, default in DEFAULTS.items()}
    check_activation(fields["hidden_act"], "CLIP hidden_act", ConversionError)
    return fields


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
