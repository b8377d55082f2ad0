"""transformers SiglipVisionModel (FramePack's image_encoder, flux_redux_bfl) -> native SiglipVisionEncoder.

The attention-pooling head is dropped. Hub checkpoints carry a "vision_model." prefix, transformers 5
saves without it: both convert.
"""
from framepack_native.models.activations import check_activation
from weights_convert.clip import block_rules
from weights_convert.core import ConversionError, Converter, Drop, Rule, source_field


DEFAULTS = dict(  # transformers' SiglipVisionConfig defaults
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
    hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
)
SIZES = dict(image_size=224, patch_size=16)


# Read nowhere, without effect on last_hidden_state: vision_use_head (the pooling head, dropped),
# attention_dropout (eval mode), initializer_factor (initialisation).


def convert_config(src):
    """Native SiglipVisionConfig fields; missing entries take transformers' SiglipVisionConfig defaults."""
    fields = {name: source_field(src, name, default) for name, default in DEFAULTS.items()}
    check_activation(fields["hidden_act"], "SigLIP hidden_act", ConversionError)
    for name, default in SIZES.items():  # an int, or transformers' [height, width]
        value = src.get(name, default)
        if isinstance(value, list):
            value = source_field(src, name, kind=(int,))
            if len(set(value)) != 1:
                raise ConversionError(f"SigLIP {name} {value} is not square; only square sizes are supported")
            value = value[0]
        fields[name] = value
    return fields


def rules(cfg):
    out = []
    for p in ("", "vision_model."):
        out += [
            Rule("patch_embed.{*}", f"{p}embeddings.patch_embedding.{{*}}"),
            Rule("pos_embed", f"{p}embeddings.position_embedding.weight"),
            Drop(f"{p}embeddings.position_ids"),
            *block_rules(f"{p}encoder.layers.{{}}"),
            Rule("post_norm.{*}", f"{p}post_layernorm.{{*}}"),
            Drop(f"{p}head.{{*}}"),
        ]
    return out


CONVERTER = Converter(
    component="image_encoder",
    native_class="framepack_native.models.siglip:SiglipVisionEncoder",
    source_classes=("SiglipVisionModel",),
    config=convert_config,
    rules=rules,
    model_types=("siglip_vision_model",),
)
