"""LlamaTextEncoder vs transformers' LlamaModel (hidden_states[i]), float32 on the CPU, rel. L2 < 1e-4.

Reference: random perturbed weights saved with save_pretrained -> weights_convert -> from_pretrained.
"""
import gc
import json

import pytest
import safetensors.torch
import torch

import weights_convert
from framepack_native.models import LlamaTextEncoder
from framepack_native.models.llama import LlamaConfig
from tests.reference.common import rel_l2
from tests.reference.encoders import LLAMA_REAL, LLAMA_TINY, build_llama, converted, load_reference, with_prefix
from weights_convert.core import build_plan, convert_state, invert
from weights_convert.llama import CONVERTER

TOL = 1e-4

TINY_VARIANTS = {
    "gqa": {},
    "mha": dict(num_key_value_heads=4),
    "llama3_rope_bias": dict(rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                                  low_freq_factor=1.0, high_freq_factor=4.0,
                                                  original_max_position_embeddings=64),
                             attention_bias=True, mlp_bias=True),
}


def _inputs(vocab, lengths, L, seed):
    """Right-padded ids (B, L) with per-row lengths; pads are random ids (the mask must hide them)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (len(lengths), L), generator=g)
    mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_parity_tiny(reference_store, tmp_path_factory, variant):
    config = {**LLAMA_TINY, **TINY_VARIANTS[variant]}
    src, dst = converted(reference_store, tmp_path_factory, f"llama_tiny_{variant}", build_llama, config)
    ref = load_reference("LlamaModel", src)
    ours = LlamaTextEncoder.from_pretrained(dst, dtype=torch.float32, device="cpu")
    ids, mask = _inputs(config["vocab_size"], [37, 23], 37, seed=sum(map(ord, variant)))
    with torch.no_grad():
        hidden = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        assert len(hidden) == config["num_hidden_layers"] + 1
        for index in (-1, -2, -3, 0, 1):
            out = ours(ids, mask, hidden_state_index=index)
            err = rel_l2(out, hidden[index])
            assert err < TOL, f"{variant} hidden_state_index {index}: rel L2 {err:.2e}"
        # The unpadded path (no mask) is the plain causal one.
        full = ref(input_ids=ids[:1], output_hidden_states=True).hidden_states[-3]
        assert rel_l2(ours(ids[:1], hidden_state_index=-3), full) < TOL
    # Padding changes nothing for the real tokens of the shorter row.
    with torch.no_grad():
        alone = ours(ids[1:, :23], hidden_state_index=-1)
        padded = ours(ids, mask, hidden_state_index=-1)[1:, :23]
    assert rel_l2(padded, alone) < TOL


def test_real_width(reference_store, tmp_path_factory, scratch):
    """4096 hidden, 32 heads, 8 KV heads, 14336 MLP, 1 layer, rope theta 5e5 (llava-llama-3-8b widths)."""
    src, dst = converted(reference_store, tmp_path_factory, "llama_real", build_llama, LLAMA_REAL, seed=1,
                         scratch=scratch)
    ids, mask = _inputs(LLAMA_REAL["vocab_size"], [19, 11], 19, seed=7)
    ref = load_reference("LlamaModel", src)
    with torch.no_grad():
        hidden = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    del ref
    gc.collect()
    ours = LlamaTextEncoder.from_pretrained(dst, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        for index in (-1, -2):
            err = rel_l2(ours(ids, mask, hidden_state_index=index), hidden[index])
            assert err < TOL, f"hidden_state_index {index}: rel L2 {err:.2e}"


def test_layers_past_index_are_not_run():
    torch.manual_seed(0)
    model = LlamaTextEncoder(LlamaConfig.tiny(num_hidden_layers=3)).eval()
    ids = torch.randint(0, 320, (2, 9))
    with torch.no_grad():
        before = model(ids, hidden_state_index=-3)
        for p in model.layers[-2:].parameters():
            p.fill_(float("nan"))
        model.norm.weight.fill_(float("nan"))
        after = model(ids, hidden_state_index=-3)
        assert torch.isnan(model(ids, hidden_state_index=-2)).all()
    assert torch.equal(before, after)


def test_dropped_layers_give_the_same_state_and_refuse_deeper_indices():
    torch.manual_seed(0)
    model = LlamaTextEncoder(LlamaConfig.tiny(num_hidden_layers=4)).eval()
    ids = torch.randint(0, 320, (2, 9))
    with torch.no_grad():
        before = model(ids, hidden_state_index=-3)
        model.drop_layers_after(-3)
        assert len(model.layers) == 2 and model.norm is None
        assert sum(p.numel() for p in model.parameters()) < sum(
            p.numel() for p in LlamaTextEncoder(LlamaConfig.tiny(num_hidden_layers=4)).parameters())
        assert torch.equal(model(ids, hidden_state_index=-3), before)
        model(ids, hidden_state_index=1)  # shallower states still work
    for index in (-2, -1, 4):
        with pytest.raises(ValueError, match=f"hidden_state_index {index} needs layers this encoder dropped"):
            model(ids, hidden_state_index=index)


def test_hidden_state_index_and_inputs_validated():
    model = LlamaTextEncoder(LlamaConfig.tiny())
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="hidden_state_index -4 out of range for 2 layers"):
        model(ids, hidden_state_index=-4)
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(ids, torch.ones(1, 5))
    with pytest.raises(ValueError, match="num_key_value_heads 3"):
        LlamaConfig.tiny(num_key_value_heads=3)
    with pytest.raises(ValueError, match="rope_type 'ntk'"):
        LlamaConfig.tiny(rope_type="ntk")


def test_converter_layout_prefix_and_round_trip(reference_store, tmp_path_factory):
    src = reference_store.get("llama_tiny_gqa", lambda p: build_llama(p, **LLAMA_TINY))
    state = safetensors.torch.load_file(src / "model.safetensors")
    native_config, native = convert_state(CONVERTER, state, json.loads((src / "config.json").read_text()))
    qkv = native["layers.1.attn.qkv.weight"]
    assert qkv.shape == ((4 + 2 * 2) * 16, 64)
    assert torch.equal(qkv[64:96], state["layers.1.self_attn.k_proj.weight"])
    assert torch.equal(native["layers.0.mlp.gate_up.weight"][96:], state["layers.0.mlp.up_proj.weight"])
    assert torch.equal(native["embed.weight"], state["embed_tokens.weight"])
    steps = build_plan(CONVERTER.rules(native_config), {k: tuple(v.shape) for k, v in state.items()})
    back = invert(steps, native)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    # A LlamaForCausalLM folder: "model." prefix and an LM head to drop.
    extra = {"lm_head.weight": torch.randn(LLAMA_TINY["vocab_size"], 64)}
    causal = with_prefix(src, tmp_path_factory.mktemp("llama_causal") / "src", "model.", extra)
    dst = tmp_path_factory.mktemp("llama_causal_native") / "native"
    weights_convert.convert(causal, dst)
    ours = LlamaTextEncoder.from_pretrained(dst, dtype=torch.float32, device="cpu")
    assert torch.equal(ours.layers[2].attn.out.weight, state["layers.2.self_attn.o_proj.weight"])
