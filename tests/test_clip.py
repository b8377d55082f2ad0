"""CLIPTextEncoder vs transformers' CLIPTextModel: last_hidden_state and pooler_output, float32, rel. L2 < 1e-4.

Both of transformers' pooling rules: legacy configs (eos_token_id == 2) pool at the highest token id, the
others at the first eos_token_id. Inputs are built so that the two rules pick different positions.
"""
import json

import pytest
import safetensors.torch
import torch

import weights_convert
from framepack_native.models import CLIPTextEncoder
from framepack_native.models.clip import CLIPTextConfig
from tests.reference.common import rel_l2
from tests.reference.encoders import CLIP_REAL, CLIP_TINY, build_clip, converted, load_reference, with_prefix
from weights_convert.core import build_plan, convert_state, invert
from weights_convert.clip import CONVERTER

TOL = 1e-4


def _prompts(bos, eos, pad, vocab, lengths, L, seed):
    """Tokenizer-like rows: bos, random tokens (some above eos), eos, then pad; (B, L) int64."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        body = torch.randint(3, vocab, (n,), generator=g)
        body[body == eos] = 3
        rows.append(torch.cat([torch.tensor([bos]), body, torch.tensor([eos]), torch.full((L - n - 2,), pad)]))
    return torch.stack(rows)


def _check(ref, ours, ids):
    with torch.no_grad():
        expected = ref(input_ids=ids)
        hidden, pooled = ours(ids)
    assert rel_l2(hidden, expected.last_hidden_state) < TOL
    assert rel_l2(pooled, expected.pooler_output) < TOL


def test_parity_tiny_first_eos_rule(reference_store, tmp_path_factory):
    """eos_token_id 200 (the current rule), ids up to 299 around it; pad == eos, the first occurrence wins."""
    src, dst = converted(reference_store, tmp_path_factory, "clip_tiny", build_clip, CLIP_TINY)
    ref = load_reference("CLIPTextModel", src)
    ours = CLIPTextEncoder.from_pretrained(dst, dtype=torch.float32, device="cpu")
    assert ours.config.eos_token_id == 200
    ids = _prompts(199, 200, 200, 300, [5, 40, 75], 77, seed=3)
    assert not torch.equal(ids.argmax(-1), (ids == 200).int().argmax(-1))
    _check(ref, ours, ids)
    _check(ref, ours, ids[:, :50])   # shorter than max_position_embeddings


def test_parity_tiny_legacy_eos_rule(reference_store, tmp_path_factory):
    """eos_token_id 2 (hub configs): pool at the highest id, here the end token 299 followed by pad 1."""
    config = {**CLIP_TINY, "eos_token_id": 2, "hidden_act": "gelu"}
    src, dst = converted(reference_store, tmp_path_factory, "clip_tiny_legacy", build_clip, config, seed=5)
    ref = load_reference("CLIPTextModel", src)
    ours = CLIPTextEncoder.from_pretrained(dst, dtype=torch.float32, device="cpu")
    assert ours.config.eos_token_id == 2 and ours.config.hidden_act == "gelu"
    ids = _prompts(298, 299, 1, 299, [7, 30], 77, seed=4)
    ids[:, -1] = 2     # an eos_token_id 2 late in the row: the legacy rule must ignore it
    assert not torch.equal(ids.argmax(-1), (ids == 2).int().argmax(-1))
    _check(ref, ours, ids)


def test_real_width(reference_store, tmp_path_factory, scratch):
    """ViT-L/14 text tower widths: 768 hidden, 12 heads, 3072 MLP, vocab 49408, 1 layer, legacy eos rule."""
    src, dst = converted(reference_store, tmp_path_factory, "clip_real", build_clip, CLIP_REAL, seed=2,
                         scratch=scratch)
    ref = load_reference("CLIPTextModel", src)
    ours = CLIPTextEncoder.from_pretrained(dst, dtype=torch.float32, device="cpu")
    _check(ref, ours, _prompts(49406, 49407, 49407, 49406, [12, 60], 77, seed=9))


def test_hub_layout_converts(reference_store, tmp_path_factory):
    """Hub files: "text_model." prefix and a stored position_ids buffer; same weights as the flat layout."""
    src = reference_store.get("clip_tiny", lambda p: build_clip(p, **CLIP_TINY))
    extra = {"text_model.embeddings.position_ids": torch.arange(77)[None]}
    hub = with_prefix(src, tmp_path_factory.mktemp("clip_hub") / "src", "text_model.", extra)
    dst = tmp_path_factory.mktemp("clip_hub_native") / "native"
    weights_convert.convert(hub, dst)
    ours = CLIPTextEncoder.from_pretrained(dst, dtype=torch.float32, device="cpu")
    ref = load_reference("CLIPTextModel", src)
    _check(ref, ours, _prompts(199, 200, 200, 300, [9], 77, seed=11))


def test_converter_layout_and_round_trip(reference_store):
    src = reference_store.get("clip_tiny", lambda p: build_clip(p, **CLIP_TINY))
    state = safetensors.torch.load_file(src / "model.safetensors")
    native_config, native = convert_state(CONVERTER, state, json.loads((src / "config.json").read_text()))
    assert native["layers.1.qkv.weight"].shape == (3 * 64, 64)
    assert torch.equal(native["layers.1.qkv.bias"][64:128], state["encoder.layers.1.self_attn.k_proj.bias"])
    assert torch.equal(native["position_embedding"], state["embeddings.position_embedding.weight"])
    assert torch.equal(native["final_norm.weight"], state["final_layer_norm.weight"])
    steps = build_plan(CONVERTER.rules(native_config), {k: tuple(v.shape) for k, v in state.items()})
    back = invert(steps, native)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_inputs_and_config_validated():
    model = CLIPTextEncoder(CLIPTextConfig.tiny())
    with pytest.raises(ValueError, match="sequence length 78 exceeds max_position_embeddings 77"):
        model(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="hidden_act 'prelu'"):
        CLIPTextConfig.tiny(hidden_act="prelu")
    with pytest.raises(ValueError, match="hidden_size 64 is not a multiple of num_attention_heads 5"):
        CLIPTextConfig.tiny(num_attention_heads=5)
