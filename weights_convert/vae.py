"""diffusers AutoencoderKLHunyuanVideo (hunyuanvideo-community/HunyuanVideo/vae) -> native HunyuanVideoVAE.

Key changes: the causal conv wrappers' inner `.conv` disappears, the one-element downsamplers/upsamplers
lists become `downsample` / `upsample`, the mid-block attention's to_q/to_k/to_v fuse into `qkv`.
"""
from framepack_native.models.activations import check_activation
from framepack_native.models.vae import ACT_FNS
from weights_convert.core import ConversionError, Converter, Rule, source_field

DEFAULTS = {  # AutoencoderKLHunyuanVideo.__init__ defaults, for configs saved before a field existed
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2, "norm_num_groups": 32, "scaling_factor": 0.476986, "spatial_compression_ratio": 8,
    "temporal_compression_ratio": 4, "mid_block_add_attention": True,
}


def convert_config(src):
    """The native config fields of a diffusers AutoencoderKLHunyuanVideo config.json."""
    fields = {k: source_field(src, k, v) for k, v in DEFAULTS.items()}
    fields["act_fn"] = check_activation(source_field(src, "act_fn", "silu"), "AutoencoderKLHunyuanVideo: act_fn",
                                        ConversionError, ACT_FNS)
    n = len(fields["block_out_channels"])
    for key, kind in (("down_block_types", "HunyuanVideoDownBlock3D"), ("up_block_types", "HunyuanVideoUpBlock3D")):
        types = source_field(src, key, [kind] * n, (str,))
        if list(types) != [kind] * n:  # diffusers' encoder and decoder raise on any other block type
            raise ConversionError(f"AutoencoderKLHunyuanVideo: {key} {types} is not {n} x {kind}, the only block "
                                  "diffusers' HunyuanVideo encoder/decoder build")
    return fields


def _resnet_rules(prefix):
    return [
        Rule(f"{prefix}.norm1.{{*}}", f"{prefix}.norm1.{{*}}"),
        Rule(f"{prefix}.norm2.{{*}}", f"{prefix}.norm2.{{*}}"),
        Rule(f"{prefix}.conv1.{{*}}", f"{prefix}.conv1.conv.{{*}}"),
        Rule(f"{prefix}.conv2.{{*}}", f"{prefix}.conv2.conv.{{*}}"),
        Rule(f"{prefix}.conv_shortcut.{{*}}", f"{prefix}.conv_shortcut.conv.{{*}}"),
    ]


def rules(config):
    out = [Rule("quant_conv.{*}", "quant_conv.{*}"), Rule("post_quant_conv.{*}", "post_quant_conv.{*}")]
    for side in ("encoder", "decoder"):
        out += [
            Rule(f"{side}.conv_in.{{*}}", f"{side}.conv_in.conv.{{*}}"),
            Rule(f"{side}.conv_out.{{*}}", f"{side}.conv_out.conv.{{*}}"),
            Rule(f"{side}.norm_out.{{*}}", f"{side}.conv_norm_out.{{*}}"),
            *_resnet_rules(f"{side}.mid_block.resnets.{{}}"),
        ]
        attn = f"{side}.mid_block.attentions.{{}}"
        out += [
            Rule(f"{attn}.norm.{{*}}", f"{attn}.group_norm.{{*}}"),
            Rule(f"{attn}.qkv.{{*}}", tuple(f"{attn}.to_{x}.{{*}}" for x in "qkv")),
            Rule(f"{attn}.proj.{{*}}", f"{attn}.to_out.0.{{*}}"),
        ]
    out += _resnet_rules("encoder.down_blocks.{}.resnets.{}")
    out += _resnet_rules("decoder.up_blocks.{}.resnets.{}")
    out += [
        Rule("encoder.down_blocks.{}.downsample.{*}", "encoder.down_blocks.{}.downsamplers.0.conv.conv.{*}"),
        Rule("decoder.up_blocks.{}.upsample.{*}", "decoder.up_blocks.{}.upsamplers.0.conv.conv.{*}"),
    ]
    return out


CONVERTER = Converter(
    component="vae",
    native_class="framepack_native.models.vae:HunyuanVideoVAE",
    source_classes=("AutoencoderKLHunyuanVideo",),
    config=convert_config,
    rules=rules,
)
