"""VAE checkpoint conversion (diffusers AutoencoderKLHunyuanVideo -> native), config and input validation."""
import pytest
import torch

from framepack_native.models.vae import HunyuanVideoVAE, HunyuanVideoVAEConfig
from tests.reference.common import perturb_
from tests.reference.vae import VAE_TINY
from weights_convert import ConversionError, invert
from weights_convert.core import build_plan, convert_state
from weights_convert.vae import CONVERTER


def diffusers_tiny(**overrides):
    from diffusers import AutoencoderKLHunyuanVideo
    return perturb_(AutoencoderKLHunyuanVideo(**{**VAE_TINY, **overrides}).eval())


def test_conversion_round_trip_and_key_names():
    ref = diffusers_tiny()
    src = ref.state_dict()
    native_config, state = convert_state(CONVERTER, src, dict(ref.config))
    model = HunyuanVideoVAE(HunyuanVideoVAEConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                     for k, v in native_config.items()}))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    # pinned structure: fused attention qkv, flattened causal-conv wrappers, single up/down sampling convs
    assert state["encoder.mid_block.attentions.0.qkv.weight"].shape == (96, 32)
    torch.testing.assert_close(state["decoder.mid_block.attentions.0.qkv.bias"][32:64],
                               src["decoder.mid_block.attentions.0.to_k.bias"], rtol=0, atol=0)
    assert torch.equal(state["decoder.up_blocks.2.upsample.weight"],
                       src["decoder.up_blocks.2.upsamplers.0.conv.conv.weight"])
    assert torch.equal(state["encoder.down_blocks.1.downsample.bias"],
                       src["encoder.down_blocks.1.downsamplers.0.conv.conv.bias"])
    assert "decoder.up_blocks.3.upsample.weight" not in state  # the last level does not upsample
    assert torch.equal(state["encoder.norm_out.weight"], src["encoder.conv_norm_out.weight"])
    steps = build_plan(CONVERTER.rules(native_config), {k: tuple(v.shape) for k, v in src.items()})
    back = invert(steps, state)
    assert back.keys() == src.keys()
    assert all(torch.equal(back[k], src[k]) for k in src)


def test_no_attention_variant_converts():
    ref = diffusers_tiny(mid_block_add_attention=False)
    native_config, state = convert_state(CONVERTER, ref.state_dict(), dict(ref.config))
    assert native_config["mid_block_add_attention"] is False
    assert not any("attentions" in k for k in state)
    model = HunyuanVideoVAE(HunyuanVideoVAEConfig(**{**native_config, "block_out_channels": (8, 16, 32, 32)}))
    model.load_state_dict(state, strict=True)
    z = torch.randn(1, 4, 2, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(model.decode(z), ref.decode(z).sample, rtol=1e-4, atol=1e-5)


def test_unsupported_source_config_is_refused():
    config = {"_class_name": "AutoencoderKLHunyuanVideo", "act_fn": "tanh"}
    with pytest.raises(ConversionError, match="act_fn"):
        CONVERTER.config(config)
    with pytest.raises(ConversionError, match="down_block_types"):
        CONVERTER.config({"down_block_types": ["DownEncoderBlock2D"] * 4})


def test_config_validation_names_the_numbers():
    with pytest.raises(ValueError, match="60 is not divisible by norm_num_groups 32"):
        HunyuanVideoVAEConfig(block_out_channels=(64, 60, 64, 64))
    with pytest.raises(ValueError, match="spatial_compression_ratio 6"):
        HunyuanVideoVAEConfig(spatial_compression_ratio=6)
    with pytest.raises(ValueError, match="temporal_compression_ratio must be 4"):
        HunyuanVideoVAEConfig(temporal_compression_ratio=8)


def test_bad_inputs_are_refused():
    model = HunyuanVideoVAE(HunyuanVideoVAEConfig.tiny())
    with pytest.raises(ValueError, match=r"latents must be \(B, 4, T, H, W\), got shape \(1, 16, 2, 3, 4\)"):
        model.decode(torch.zeros(1, 16, 2, 3, 4))
    with pytest.raises(ValueError, match="video must be"):
        model.encode(torch.zeros(1, 3, 32, 32))


def test_enable_tiling_keeps_unset_values():
    model = HunyuanVideoVAE(HunyuanVideoVAEConfig.tiny())
    assert (model.use_tiling, model.use_framewise_decoding, model.tile_sample_min_num_frames) == (False, True, 16)
    model.enable_tiling(tile_sample_min_height=128, tile_sample_stride_width=96)
    assert (model.use_tiling, model.tile_sample_min_height, model.tile_sample_min_width) == (True, 128, 256)
    assert (model.tile_sample_stride_height, model.tile_sample_stride_width) == (192, 96)
    model.disable_tiling()
    assert not model.use_tiling
    assert model.scaling_factor == 0.476986
