"""FramePackTransformer vs diffusers' HunyuanVideoFramepackTransformer3DModel (float32 CPU, rel. L2 < 1e-4),
on perturbed random weights converted by weights_convert; conversion structure, round trip and input errors."""
import json

import pytest
import safetensors.torch
import torch

import kernels
from framepack_native.models import FramePackTransformer
from framepack_native.models.transformer import FramePackTransformerConfig
from tests.reference.common import rel_l2
from tests.reference.transformer import TINY, builder, load, make_inputs, reference_forward
from weights_convert import ConversionError, convert
from weights_convert.core import build_plan, convert_state, find_converter, invert
from weights_convert.transformer import CONVERTER, convert_config

TOL = 1e-4  # float32 parity with diffusers
TOL_BF16 = 2e-2  # our bfloat16 forward vs diffusers' float32


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


@pytest.fixture(scope="module")
def tiny(reference_store, tmp_path_factory):
    """(reference model, our model converted through weights_convert, source folder)."""
    src = reference_store.get("transformer_tiny", builder(TINY))
    dst = tmp_path_factory.mktemp("transformer_tiny") / "native"
    convert(src, dst)
    ours = FramePackTransformer.from_pretrained(dst, dtype=torch.float32, device="cpu")
    return load(src), ours, src, dst


def run_ours(model, inputs):
    with torch.no_grad():
        return model(**inputs)


# Post-patch 3x5 (6x10 latents) pads both the 2x (to 4x8 ... ) and 4x history grids; 1x9 is a thin strip.
CASES = {
    "b1-inverted": dict(text_lens=[5]),
    "b1-inverted-padding-sections": dict(text_lens=[5], padding=6),
    "b2-inverted-padding": dict(text_lens=[7, 3], padding=3),
    "b2-vanilla-5x3": dict(text_lens=[4, 9], sampling="vanilla", height=10, width=6),
    "b2-equal-text-scalar-t": dict(text_lens=[6, 6], sampling="vanilla", scalar_t=True),
    "b3-strip-1x9": dict(text_lens=[3, 8, 5], frames=2, height=2, width=18, padding=4),
    "b1-long-history": dict(text_lens=[2], sampling="vanilla", frames=1, history_sizes=(2, 3, 5)),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_parity_tiny(tiny, case):
    ref, ours, _, _ = tiny
    inputs = make_inputs(TINY, seed=list(CASES).index(case), **CASES[case])  # str hash() changes per run
    expected = reference_forward(ref, inputs)
    got = run_ours(ours, inputs)
    assert got.shape == inputs["hidden_states"].shape
    assert rel_l2(got, expected) < TOL


@pytest.mark.parametrize("histories", [("2x", "4x"), ("clean", "4x"), ("clean", "2x"), ("clean",), ()],
                         ids=["no-clean", "no-2x", "no-4x", "clean-only", "none"])
@pytest.mark.parametrize("text_lens", [[4], [6, 2]], ids=["b1", "b2"])
def test_parity_without_histories(tiny, histories, text_lens):
    ref, ours, _, _ = tiny
    inputs = make_inputs(TINY, text_lens=text_lens, histories=histories, seed=len(histories) + 10 * len(text_lens))
    expected = reference_forward(ref, inputs)
    assert rel_l2(run_ours(ours, inputs), expected) < TOL


def test_padded_text_changes_nothing(tiny):
    """Batch 1 truncates the text: extra padding (garbage embeddings, mask 0) must not change the output."""
    _, ours, _, _ = tiny
    inputs = make_inputs(TINY, text_lens=[5], seed=3)
    longer = dict(inputs)
    longer["encoder_hidden_states"] = torch.cat((inputs["encoder_hidden_states"], torch.randn(1, 4, 24) * 50), 1)
    longer["encoder_attention_mask"] = torch.cat((inputs["encoder_attention_mask"], torch.zeros(1, 4).long()), 1)
    assert torch.equal(run_ours(ours, inputs), run_ours(ours, longer))


def test_bf16_close_to_float32(tiny, tmp_path):
    ref, _, _, dst = tiny
    ours = FramePackTransformer.from_pretrained(dst, dtype=torch.bfloat16, device="cpu")
    inputs = make_inputs(TINY, text_lens=[7, 3], padding=3, seed=5)
    got = run_ours(ours, inputs)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert rel_l2(got, reference_forward(ref, inputs)) < TOL_BF16


def test_every_kernel_call_uses_the_model_backend(tiny, monkeypatch):
    _, ours, _, _ = tiny
    seen = []
    for name in ("attention", "rms_norm_rope"):
        original = getattr(kernels, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            seen.append((_name, kwargs.get("backend")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernels, name, spy)
    monkeypatch.setattr(ours, "kernel_backend", "torch")
    run_ours(ours, make_inputs(TINY, text_lens=[4, 2], seed=7))
    c = ours.config
    attention_calls = c.num_refiner_layers + c.num_layers + c.num_single_layers
    norm_calls = 4 * c.num_layers + 2 * c.num_single_layers
    expected = [("attention", "torch")] * attention_calls + [("rms_norm_rope", "torch")] * norm_calls
    assert sorted(seen) == sorted(expected)


def _source(src):
    state = {}
    for shard in sorted(src.glob("*.safetensors")):
        state.update(safetensors.torch.load_file(shard))
    return state, json.loads((src / "config.json").read_text())


def test_conversion_structure_and_round_trip(tiny):
    ref, ours, src, _ = tiny
    state, config = _source(src)
    native_config, native = convert_state(CONVERTER, state, config)
    assert native.keys() == ours.state_dict().keys()
    D, M = 32, 128
    qkv = native["double_blocks.1.img_attn.qkv.weight"]
    assert torch.equal(qkv, torch.cat([state[f"transformer_blocks.1.attn.to_{x}.weight"] for x in "qkv"]))
    txt_qkv_bias = native["double_blocks.0.txt_attn.qkv.bias"]
    assert torch.equal(txt_qkv_bias[D:2 * D], state["transformer_blocks.0.attn.add_k_proj.bias"])
    assert native["single_blocks.1.linear1.weight"].shape == (3 * D + M, D)
    linear1 = native["single_blocks.1.linear1.weight"]
    assert torch.equal(linear1[3 * D:], state["single_transformer_blocks.1.proj_mlp.weight"])
    assert torch.equal(native["final_layer.modulation.weight"][:D], state["norm_out.linear.weight"][D:])  # shift first
    assert torch.equal(native["history_in.proj_4x.weight"], state["clean_x_embedder.proj_4x.weight"])
    steps = build_plan(CONVERTER.rules(native_config), {k: tuple(v.shape) for k, v in state.items()})
    back = invert(steps, native)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_convert_config_rejects_other_variants():
    base = dict(TINY, _class_name="HunyuanVideoFramepackTransformer3DModel")
    assert convert_config(base)["rope_axes_dim"] == [4, 6, 6]
    with pytest.raises(ConversionError, match="has_clean_x_embedder"):
        convert_config(dict(base, has_clean_x_embedder=False))
    with pytest.raises(ConversionError, match="qk_norm"):
        convert_config(dict(base, qk_norm="layer_norm"))


def test_both_checkpoint_class_names_are_recognised():
    """FramePackI2V_HY's config.json says HunyuanVideoTransformer3DModelPacked (FramePack's own class)."""
    for name in ("HunyuanVideoFramepackTransformer3DModel", "HunyuanVideoTransformer3DModelPacked"):
        assert find_converter({"_class_name": name}, "config.json") is CONVERTER


def test_config_validation():
    with pytest.raises(ValueError, match="sums to 18"):
        FramePackTransformerConfig.tiny(rope_axes_dim=(6, 6, 6))
    with pytest.raises(ValueError, match="patch"):
        FramePackTransformerConfig.tiny(patch_size=1)


@pytest.mark.parametrize("change, message", [
    (lambda i: i.update(encoder_attention_mask=torch.tensor([[1, 0, 1, 1, 1, 0, 0]])), "with holes"),
    (lambda i: i.update(encoder_attention_mask=torch.zeros(1, 7).long()), "lengths \\[0\\]"),
    (lambda i: i.update(indices_latents_history_2x=None), "latents_history_2x and its indices"),
    (lambda i: i.update(hidden_states=torch.randn(1, 16, 3, 7, 10)), "multiples of 2, got 7x10"),
    (lambda i: i.update(guidance=None), "embeds guidance"),
    (lambda i: i.update(latents_clean=torch.randn(1, 16, 2, 6, 12)), "latents_clean must be"),
    (lambda i: i.update(indices_latents=torch.arange(4)), "indices_latents must be \\(3,\\)"),
])
def test_bad_inputs_raise(tiny, change, message):
    _, ours, _, _ = tiny
    inputs = make_inputs(TINY, text_lens=[5])
    change(inputs)
    with pytest.raises(ValueError, match=message):
        run_ours(ours, inputs)


def test_autograd_path_matches_inference_path(tiny):
    """With autograd on, the blocks take their plain (out-of-place) path: same output, and gradients flow."""
    _, ours, _, _ = tiny
    inputs = make_inputs(TINY, text_lens=[5, 3], seed=9)
    expected = run_ours(ours, inputs)
    hidden = inputs["hidden_states"].clone().requires_grad_(True)
    got = ours(**{**inputs, "hidden_states": hidden})
    assert rel_l2(got.detach(), expected) < 1e-6
    got.square().mean().backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all() and hidden.grad.abs().sum() > 0
    grads = [p.grad for p in ours.parameters()]
    ours.zero_grad(set_to_none=True)
    assert all(g is not None for g in grads)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_single_block_rows_equal_full_block_rows(grad):
    """The last single block computes queries, MLP and output for the returned rows only: same values."""
    from framepack_native.models.transformer_blocks import SingleStreamBlock

    torch.manual_seed(0)
    block = SingleStreamBlock(32, 2, 16, 128)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.2)
    n_img, rows = 11, slice(4, 11)
    x, vec = torch.randn(2, 15, 32), torch.randn(2, 32)
    cos, sin = torch.randn(n_img, 16).cos(), torch.randn(n_img, 16).sin()
    kv_lens = torch.tensor([15, 13])
    with torch.set_grad_enabled(grad):
        full = block(x, vec, cos, sin, n_img, kv_lens, "torch")
        part = block(x, vec, cos, sin, n_img, kv_lens, "torch", rows=rows)
    assert part.shape == (2, 7, 32)
    assert rel_l2(part, full[:, rows]) < 1e-6
    assert not torch.equal(part, x[:, rows])  # the block changed its input


def test_parity_without_single_blocks(reference_store, tmp_path):
    """No single-stream block: the window is cut from the dual-stream output."""
    config = {**TINY, "num_single_layers": 0}
    src = reference_store.get("transformer_tiny_no_single", builder(config))
    convert(src, tmp_path / "native")
    ours = FramePackTransformer.from_pretrained(tmp_path / "native", dtype=torch.float32, device="cpu")
    inputs = make_inputs(config, text_lens=[5, 3], seed=11)
    assert rel_l2(run_ours(ours, inputs), reference_forward(load(src), inputs)) < TOL
