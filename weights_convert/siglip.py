"""transformers SiglipVisionModel (FramePack's image_encoder, flux_redux_bfl) -> native SiglipVisionEncoder.

The attention-pooling head is dropped. Hub checkpoints carry a "vision_model." prefix, transformers 5
saves without it: both convert.
"""
from weights_convert.clip import block_rules
from weights_convert.core import ConversionError, Converter, Drop, Rule


def convert_config(src):
    """Native SiglipVisionConfig fields; missing entries take transformers' SiglipVisionConfig defaults."""
    fields = dict(
        hidden_size=src.get("hidden_size", 768),
        intermediate_size=src.get("intermediate_size", 3072),
        num_hidden_layers=src.get("num_hidden_layers", 12),
        num_attention_heads=src.get("num_attention_heads", 12),
        num_channels=src.get("num_channels", 3),
        image_size=src.get("image_size", 224),
        patch_size=src.get("patch_size", 16),
        hidden_act=src.get("hidden_act", "gelu_pytorch_tanh"),
        layer_norm_eps=src.get("layer_norm_eps", 1e-6),
    )
    for name in ("image_size", "patch_size"):
        value = fields[name]
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise ConversionError(f"SigLIP {name} {value} is not square; only square sizes are supported")
            fields[name] = value[0]
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
