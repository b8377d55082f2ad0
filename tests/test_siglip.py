"""SiglipVisionEncoder vs transformers' SiglipVisionModel last_hidden_state, float32, rel. L2 < 1e-4."""
import json

import pytest
import safetensors.torch
import torch

import weights_convert
from framepack_native.models import SiglipVisionEncoder
from framepack_native.models.siglip import SiglipVisionConfig
from tests.reference.common import rel_l2
from tests.reference.encoders import SIGLIP_REAL, SIGLIP_TINY, build_siglip, converted, load_reference, with_prefix
from weights_convert.core import build_plan, convert_state, invert
from weights_convert.siglip import CONVERTER

TOL = 1e-4


def _check(src, dst, pixels):
    ref = load_reference("SiglipVisionModel", src)
    ours = SiglipVisionEncoder.from_pretrained(dst, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        expected = ref(pixel_values=pixels).last_hidden_state
        out = ours(pixels)
    err = rel_l2(out, expected)
    assert err < TOL, f"rel L2 {err:.2e}"


def test_parity_tiny(reference_store, tmp_path_factory):
    """30 px images, patch 7: the stride drops the last 2 px, as the reference's valid convolution does."""
    src, dst = converted(reference_store, tmp_path_factory, "siglip_tiny", build_siglip, SIGLIP_TINY)
    g = torch.Generator().manual_seed(21)
    _check(src, dst, torch.rand(3, 3, 30, 30, generator=g) * 2 - 1)


def test_real_width(reference_store, tmp_path_factory, scratch):
    """so400m widths: 1152 hidden, 16 heads, 4304 MLP, patch 14, 384 px (729 tokens), 1 layer."""
    src, dst = converted(reference_store, tmp_path_factory, "siglip_real", build_siglip, SIGLIP_REAL, seed=3,
                         scratch=scratch)
    g = torch.Generator().manual_seed(22)
    _check(src, dst, torch.rand(2, 3, 384, 384, generator=g) * 2 - 1)


def test_hub_layout_converts_and_head_is_dropped(reference_store, tmp_path_factory):
    """Hub files: "vision_model." prefix, with the pooling head; the head is dropped, outputs unchanged."""
    src = reference_store.get("siglip_tiny", lambda p: build_siglip(p, **SIGLIP_TINY))
    hub = with_prefix(src, tmp_path_factory.mktemp("siglip_hub") / "src", "vision_model.")
    assert any(k.startswith("vision_model.head.") for k in safetensors.torch.load_file(hub / "model.safetensors"))
    dst = tmp_path_factory.mktemp("siglip_hub_native") / "native"
    weights_convert.convert(hub, dst)
    g = torch.Generator().manual_seed(23)
    _check(src, dst, torch.rand(1, 3, 30, 30, generator=g) * 2 - 1)


def test_converter_layout_and_round_trip(reference_store):
    src = reference_store.get("siglip_tiny", lambda p: build_siglip(p, **SIGLIP_TINY))
    state = safetensors.torch.load_file(src / "model.safetensors")
    native_config, native = convert_state(CONVERTER, state, json.loads((src / "config.json").read_text()))
    assert native["patch_embed.weight"].shape == (64, 3, 7, 7)
    assert native["pos_embed"].shape == (16, 64)
    assert torch.equal(native["layers.0.qkv.weight"][128:], state["encoder.layers.0.self_attn.v_proj.weight"])
    assert torch.equal(native["post_norm.bias"], state["post_layernorm.bias"])
    assert not any(k.startswith("head") for k in native)
    steps = build_plan(CONVERTER.rules(native_config), {k: tuple(v.shape) for k, v in state.items()})
    back = invert(steps, native)
    kept = {k for k in state if not k.startswith("head.")}
    assert back.keys() == kept and all(torch.equal(back[k], state[k]) for k in kept)


def test_inputs_validated():
    model = SiglipVisionEncoder(SiglipVisionConfig.tiny())
    with pytest.raises(ValueError, match=r"pixel_values must be \(B, 3, 30, 30\), got \(1, 3, 28, 30\)"):
        model(torch.zeros(1, 3, 28, 30))
    with pytest.raises(ValueError, match="hidden_size 64 is not a multiple of num_attention_heads 5"):
        SiglipVisionConfig.tiny(num_attention_heads=5)
