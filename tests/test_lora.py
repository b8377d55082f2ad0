"""framepack_native.lora against diffusers' HunyuanVideoFramepackPipeline.load_lora_weights (+ set_adapters for the
strength) on a tiny random FramePack transformer converted by weights_convert, float32 CPU: transformer output rel. L2
< 1e-4 and every merged native tensor against diffusers' fused weights; musubi vs PEFT keys, merged vs live, exact
unload, LoRAs adding up, offload, and bad files (one line each, the model unchanged)."""
import json

import pytest
import torch

from framepack_native import lora
from framepack_native.demo import demo_image, demo_pipeline
from framepack_native.lora import load_lora, unload_lora
from framepack_native.lora_formats import SWAP, ModuleTable, Target
from framepack_native.models import FramePackTransformer
from tests.reference import lora as ref_lora
from tests.reference.common import rel_l2
from tests.reference.transformer import TINY, builder, load, make_inputs, reference_forward
from weights_convert import convert

TOL = 1e-4  # float32 parity with diffusers (transformer output)
TOL_WEIGHTS = 1e-6  # merged native tensors vs diffusers' fused ones (max abs error / max abs of the tensor)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


@pytest.fixture(scope="module")
def tiny(reference_store, tmp_path_factory):
    """(diffusers source folder, native folder, {diffusers module: weight shape}, the diffusers config)."""
    src = reference_store.get("transformer_tiny", builder(TINY))
    dst = tmp_path_factory.mktemp("lora_tiny") / "native"
    convert(src, dst)
    config = load(src).config
    return src, dst, ref_lora.module_shapes(dict(config)), dict(config)


@pytest.fixture
def ours(tiny):
    return FramePackTransformer.from_pretrained(tiny[1], dtype=torch.float32, device="cpu").eval()


@pytest.fixture(scope="module")
def inputs():
    return make_inputs(TINY, text_lens=[6, 3], seed=5)  # batch 2, masked text: every stream and the refiner


def forward(model, inputs):
    with torch.no_grad():
        return model(**inputs)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before):
    now = model.state_dict()
    assert list(now) == list(before)
    changed = [k for k in before if not torch.equal(now[k], before[k])]
    assert not changed, f"changed: {changed[:5]}"


def assert_weights_match(ours, expected, names=None):
    """Every native tensor (or those of `names`) within TOL_WEIGHTS of expected, relative to its largest entry."""
    state = ours.state_dict()
    for name in names or expected:
        err = (state[name] - expected[name]).abs().max() / expected[name].abs().max().clamp_min(1e-30)
        assert err < TOL_WEIGHTS, f"{name}: {err:.2e}"


# ---- parity with diffusers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_peft_every_module_matches_diffusers(tiny, ours, inputs, tmp_path, strength):
    """A LoRA on every Linear / Conv3d diffusers' PEFT targets (dual + single blocks, both streams, refiner, embedders,
    final layer; ranks 2-4 mixed), merged at `strength`, against diffusers' load_lora_weights + set_adapters."""
    src, _, shapes, _ = tiny
    path = ref_lora.save(tmp_path / "peft.safetensors", ref_lora.random_peft(shapes, seed=1))
    base = forward(ours, inputs)
    handle = load_lora(ours, path, strength)
    assert len(handle.modules) == len({ModuleTable(ours.config).dotted[m][1].module for m in shapes})
    expected = reference_forward(ref_lora.diffusers_with_lora(load(src), path, strength), inputs)
    got = forward(ours, inputs)
    assert rel_l2(base, expected) > 100 * TOL, "the LoRA barely changes the output: the test would be blind"
    assert rel_l2(got, expected) < TOL


def test_peft_merged_weights_match_diffusers_fused(tiny, ours, tmp_path):
    """Every native tensor after the merge equals diffusers' fuse_lora result converted by weights_convert (catches
    a wrong row block or a missed module however little it moves the output)."""
    src, _, shapes, config = tiny
    path = ref_lora.save(tmp_path / "peft.safetensors", ref_lora.random_peft(shapes, seed=2))
    load_lora(ours, path)
    assert_weights_match(ours, ref_lora.diffusers_fused_native(ref_lora.diffusers_with_lora(load(src), path), config))


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_original_keys_match_diffusers(tiny, ours, inputs, tmp_path, strength):
    """Original HunyuanVideo keys over every original module (fused qkv and linear1, refiner, final layer) against
    diffusers loading the same LoRA in PEFT keys; weights against diffusers' fused ones."""
    src, _, _, config = tiny
    original, peft = ref_lora.random_original(config, seed=3)
    ours_path = ref_lora.save(tmp_path / "original.safetensors", original)
    ref_path = ref_lora.save(tmp_path / "peft.safetensors", peft)
    load_lora(ours, ours_path, strength)
    expected = reference_forward(ref_lora.diffusers_with_lora(load(src), ref_path, strength), inputs)
    assert rel_l2(forward(ours, inputs), expected) < TOL
    if strength == 1.0:
        assert_weights_match(ours, ref_lora.diffusers_fused_native(ref_lora.diffusers_with_lora(load(src), ref_path),
                                                                  config))


def test_original_keys_through_diffusers_own_conversion(tiny, ours, inputs, tmp_path):
    """The original-key file itself through diffusers' _convert_hunyuan_video_lora_to_diffusers, on what it reads
    right: it splits single-block linear1 at a hard-coded 3072 rows and chunks the refiner's self_attn_qkv lora_A
    (both left out here), and swaps final_layer.adaLN_modulation.1's lora_A rank halves (given equal halves here)."""
    src, _, _, config = tiny
    original, _ = ref_lora.random_original(config, seed=4, skip=ref_lora.DIFFUSERS_MISREADS, symmetric_final_a=True)
    path = ref_lora.save(tmp_path / "original.safetensors", original)
    base = forward(ours, inputs)
    load_lora(ours, path)
    expected = reference_forward(ref_lora.diffusers_with_lora(load(src), path), inputs)
    assert rel_l2(base, expected) > 100 * TOL
    assert rel_l2(forward(ours, inputs), expected) < TOL


def test_peft_alpha_metadata_matches_diffusers(tiny, ours, inputs, tmp_path):
    """diffusers' lora_adapter_metadata (lora_alpha != r, an alpha_pattern entry): scale alpha / rank per module."""
    src, _, shapes, _ = tiny
    names = ["transformer_blocks.0.attn.to_q", "transformer_blocks.1.ff.net.2", "single_transformer_blocks.0.proj_mlp"]
    peft = ref_lora.random_peft(shapes, seed=5, ranks=(4,), names=names, magnitude=0.2)
    meta = {"r": 4, "lora_alpha": 2, "alpha_pattern": {"single_transformer_blocks.0.proj_mlp": 8},
            "target_modules": names}
    path = ref_lora.save(tmp_path / "meta.safetensors", peft,
                         {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in meta.items()})})
    load_lora(ours, path)
    expected = reference_forward(ref_lora.diffusers_with_lora(load(src), path), inputs)
    assert rel_l2(forward(ours, inputs), expected) < TOL
    no_meta = FramePackTransformer.from_pretrained(tiny[1], dtype=torch.float32, device="cpu")
    load_lora(no_meta, ref_lora.save(tmp_path / "plain.safetensors", peft))
    assert rel_l2(forward(no_meta, inputs), expected) > 10 * TOL  # the metadata's alphas matter


# ---- formats against each other -----------------------------------------------------------------------------------

def test_musubi_keys_equal_peft_keys(tiny, ours, inputs, tmp_path):
    """The same LoRA in musubi's keys (alpha != rank, B rescaled) and PEFT's gives the same transformer."""
    _, dst, shapes, _ = tiny
    peft = ref_lora.random_peft(shapes, seed=6)
    alphas = {name: 0.5 + i % 5 for i, name in enumerate(shapes)}
    load_lora(ours, ref_lora.save(tmp_path / "peft.safetensors", peft))
    other = FramePackTransformer.from_pretrained(dst, dtype=torch.float32, device="cpu")
    load_lora(other, ref_lora.save(tmp_path / "musubi.safetensors", ref_lora.peft_to_musubi(peft, alphas)))
    assert rel_l2(forward(other, inputs), forward(ours, inputs)) < 1e-6
    assert_weights_match(other, snapshot(ours))


def test_alpha_scales_the_lora(tiny, ours, tmp_path):
    """musubi alpha = rank / 4 is strength 0.25 of the unscaled factors; alpha 0 means rank (kohya's rule); a PEFT
    file's .alpha keys count the same way."""
    _, dst, shapes, _ = tiny
    names = ["transformer_blocks.0.attn.add_k_proj", "single_transformer_blocks.1.proj_out"]
    peft = ref_lora.random_peft(shapes, seed=7, ranks=(4,), names=names)
    quarter = ref_lora.peft_to_musubi(peft, {n: 4.0 for n in names})  # B unscaled
    for k in quarter:
        if k.endswith(".alpha"):
            quarter[k] = torch.tensor(1.0)
    load_lora(ours, ref_lora.save(tmp_path / "peft.safetensors", peft), 0.25)
    expected = snapshot(ours)

    def merged(tensors, strength=1.0):
        model = FramePackTransformer.from_pretrained(dst, dtype=torch.float32, device="cpu")
        load_lora(model, ref_lora.save(tmp_path / "x.safetensors", tensors), strength)
        return model

    assert_weights_match(merged(quarter), expected)
    zero = {k: (torch.tensor(0.0) if k.endswith(".alpha") else v) for k, v in quarter.items()}
    assert_weights_match(merged(zero, 0.25), expected)
    peft_alpha = dict(peft, **{f"transformer.{n}.alpha": torch.tensor(1.0) for n in names})
    assert_weights_match(merged(peft_alpha), expected)


@pytest.mark.parametrize("variant", ["lora_unet_", "diffusion_model.", "transformer."])
def test_original_keys_behind_prefixes(tiny, ours, tmp_path, variant):
    """Original HunyuanVideo keys bare or behind musubi's lora_unet_ (dots as _, lora_down / lora_up) or a dotted
    prefix: the same weights, bit for bit."""
    _, dst, _, config = tiny
    original, _ = ref_lora.random_original(config, seed=8)
    load_lora(ours, ref_lora.save(tmp_path / "bare.safetensors", original))

    def renamed(key):
        if variant != "lora_unet_":
            return variant + key
        module, _, tail = key.partition(".lora_")
        return f"lora_unet_{module.replace('.', '_')}.lora_{tail.replace('A.', 'down.').replace('B.', 'up.')}"

    other = FramePackTransformer.from_pretrained(dst, dtype=torch.float32, device="cpu")
    load_lora(other, ref_lora.save(tmp_path / "prefixed.safetensors", {renamed(k): v for k, v in original.items()}))
    assert_same_state(other, snapshot(ours))


@pytest.mark.parametrize("prefix", ["diffusion_model.", "base_model.model.", ""])
def test_peft_keys_behind_other_prefixes(tiny, ours, tmp_path, prefix):
    _, dst, shapes, _ = tiny
    load_lora(ours, ref_lora.save(tmp_path / "a.safetensors", ref_lora.random_peft(shapes, seed=16)))
    other = FramePackTransformer.from_pretrained(dst, dtype=torch.float32, device="cpu")
    load_lora(other, ref_lora.save(tmp_path / "b.safetensors", ref_lora.random_peft(shapes, seed=16, prefix=prefix)))
    assert_same_state(other, snapshot(ours))


def test_full_deltas_diff_and_diff_b(ours, tmp_path):
    """diff / diff_b keys: a norm weight, rows of a fused weight and its bias, norm_out's swapped halves."""
    g = torch.Generator().manual_seed(9)
    D = ours.config.hidden_dim
    before = snapshot(ours)
    tensors = {
        "diffusion_model.double_blocks.0.img_attn_q_norm.diff": torch.randn(16, generator=g),
        "transformer.transformer_blocks.1.attn.add_v_proj.diff": torch.randn(D, D, generator=g),
        "transformer.transformer_blocks.1.attn.add_v_proj.diff_b": torch.randn(D, generator=g),
        "transformer.norm_out.linear.diff_b": torch.randn(2 * D, generator=g),
        "single_blocks.1.linear2.diff": torch.randn(D, 5 * D, generator=g),
    }
    load_lora(ours, ref_lora.save(tmp_path / "diff.safetensors", tensors), 0.5)
    s, keys = 0.5, list(tensors.values())
    expected = dict(before)
    expected["double_blocks.0.img_attn.norm_q.weight"] = before["double_blocks.0.img_attn.norm_q.weight"] + s * keys[0]
    qkv_w = before["double_blocks.1.txt_attn.qkv.weight"].clone()
    qkv_b = before["double_blocks.1.txt_attn.qkv.bias"].clone()
    qkv_w[2 * D:] += s * keys[1]
    qkv_b[2 * D:] += s * keys[2]
    expected["double_blocks.1.txt_attn.qkv.weight"], expected["double_blocks.1.txt_attn.qkv.bias"] = qkv_w, qkv_b
    scale_shift = keys[3].chunk(2)  # diffusers' (scale, shift) -> native (shift, scale)
    expected["final_layer.modulation.bias"] = before["final_layer.modulation.bias"] + s * torch.cat(scale_shift[::-1])
    expected["single_blocks.1.linear2.weight"] = before["single_blocks.1.linear2.weight"] + s * keys[4]
    assert_weights_match(ours, expected)
    changed = {k for k in before if not torch.equal(before[k], ours.state_dict()[k])}
    assert changed == {"double_blocks.0.img_attn.norm_q.weight", "double_blocks.1.txt_attn.qkv.weight",
                       "double_blocks.1.txt_attn.qkv.bias", "final_layer.modulation.bias",
                       "single_blocks.1.linear2.weight"}


def test_module_table_pins_a_few_names(ours):
    table = ModuleTable(ours.config)
    D = ours.config.hidden_dim
    name, kind, target = table.resolve("lora_unet_single_transformer_blocks_1_proj_mlp.lora_down.weight")
    assert (name, kind) == ("single_transformer_blocks.1.proj_mlp", "down")
    assert target == Target("single_blocks.1.linear1", 3)
    assert target.rows(3 * D + 4 * D, D).tolist() == list(range(3 * D, 7 * D))
    assert table.resolve("transformer.norm_out.linear.lora_B.weight")[2] == Target("final_layer.modulation", SWAP)
    assert Target("m", SWAP).rows(4, 2).tolist() == [2, 3, 0, 1]
    assert table.resolve("diffusion_model.final_layer.adaLN_modulation.1.lora_B.weight")[2] == \
        Target("final_layer.modulation")
    assert table.resolve("lora_unet_double_blocks_1_txt_attn_qkv.alpha")[1:] == ("alpha", Target(
        "double_blocks.1.txt_attn.qkv"))
    assert table.resolve("transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight")[2] == Target(
        "double_blocks.0.txt_attn.qkv", 1)
    assert table.resolve("transformer.transformer_blocks.2.attn.to_q.lora_A.weight") is None  # 2 dual blocks only
    assert table.resolve("transformer_blocks.0.attn.to_q.weight") is None  # a weight, not a LoRA tensor


# ---- merged, live, unload, several ------------------------------------------------------------------------------

def test_merged_and_live_agree_and_unload_restores_bits(tiny, ours, inputs, tmp_path):
    _, _, shapes, config = tiny
    path = ref_lora.save(tmp_path / "peft.safetensors", ref_lora.random_peft(shapes, seed=10, magnitude=0.2))
    before, base = snapshot(ours), forward(ours, inputs)
    load_lora(ours, path, 0.7)
    merged = forward(ours, inputs)
    assert rel_l2(merged, base) > 1e-2
    unload_lora(ours)
    assert_same_state(ours, before)
    handle = load_lora(ours, path, 0.7, live=True)
    assert_same_state(ours, before)  # live: the parameters themselves stay untouched
    assert rel_l2(forward(ours, inputs), merged) < 1e-5
    handle.set_strength(0.0)
    assert rel_l2(forward(ours, inputs), base) < 1e-6
    handle.set_strength(0.7)
    assert rel_l2(forward(ours, inputs), merged) < 1e-5
    handle.remove()
    assert type(ours.double_blocks[0].img_attn.qkv) is torch.nn.Linear
    assert torch.equal(forward(ours, inputs), base)
    with pytest.raises(ValueError, match="merged into the weights"):
        load_lora(ours, path, 0.7).set_strength(1.0)
    unload_lora(ours)
    assert_same_state(ours, before)
    # bf16: the merge rounds, unload still restores every bit
    ours.to(torch.bfloat16)
    before16 = snapshot(ours)
    load_lora(ours, path, 1.3)
    load_lora(ours, ref_lora.save(tmp_path / "orig.safetensors", ref_lora.random_original(config, seed=11)[0]), -0.8)
    linear1 = "single_blocks.0.linear1.weight"
    assert not torch.equal(ours.state_dict()[linear1], before16[linear1])
    unload_lora(ours)
    assert_same_state(ours, before16)


def test_two_loras_add_up(ours, inputs, tmp_path):
    """A q-only LoRA (diffusers keys) and a fused-qkv one (original keys) on the same weight, plus a live third:
    the merged weight equals W + s1 scale1 B1 A1 (q rows) + s2 B2 A2 built by hand, the output with the live one too."""
    g = torch.Generator().manual_seed(12)
    D, r = ours.config.hidden_dim, 3
    a1, b1 = torch.randn(r, D, generator=g), torch.randn(D, r, generator=g) * 0.1
    a2, b2 = torch.randn(2, D, generator=g), torch.randn(3 * D, 2, generator=g) * 0.1
    a3, b3 = torch.randn(r, 5 * D, generator=g) * 0.5, torch.randn(D, r, generator=g) * 0.1
    first = {"lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight": a1,
             "lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight": b1,
             "lora_unet_transformer_blocks_0_attn_to_q.alpha": torch.tensor(1.5)}
    second = {"double_blocks.0.img_attn_qkv.lora_A.weight": a2, "double_blocks.0.img_attn_qkv.lora_B.weight": b2}
    third = {"transformer.single_transformer_blocks.1.proj_out.lora_A.weight": a3,
             "transformer.single_transformer_blocks.1.proj_out.lora_B.weight": b3}
    expected = FramePackTransformer(ours.config).eval()
    expected.load_state_dict(snapshot(ours))
    with torch.no_grad():
        w = expected.double_blocks[0].img_attn.qkv.weight
        w[:D] += 0.6 * (1.5 / r) * (b1 @ a1)
        w += -1.2 * (b2 @ a2)
    load_lora(ours, ref_lora.save(tmp_path / "one.safetensors", first), 0.6)
    load_lora(ours, ref_lora.save(tmp_path / "two.safetensors", second), -1.2)
    assert_weights_match(ours, expected.state_dict())
    with torch.no_grad():
        expected.single_blocks[1].linear2.weight += 2.0 * (b3 @ a3)
    load_lora(ours, ref_lora.save(tmp_path / "three.safetensors", third), 2.0, live=True)
    assert rel_l2(forward(ours, inputs), forward(expected, inputs)) < 1e-6
    assert [x.strength for x in lora.loras(ours)] == [0.6, -1.2, 2.0]
    with pytest.raises(ValueError, match="merged after it"):
        lora.loras(ours)[0].remove()


def test_pipeline_entry_points_and_offload(tmp_path):
    """pipe.load_lora / unload_lora, merged and live, under offload=True (streamed blocks on packed host copies,
    packed before and after the merge): the same frames as the resident pipeline, bit for bit."""
    kw = dict(height=32, width=48, num_frames=5, latent_window_size=2, num_inference_steps=1)
    plain, streamed = demo_pipeline(seed=3), demo_pipeline(seed=3)
    streamed.offload = True
    shapes = ref_lora.module_shapes(ref_lora.diffusers_kwargs(plain.transformer.config))
    path = ref_lora.save(tmp_path / "demo.safetensors", ref_lora.random_peft(shapes, seed=13, magnitude=0.3))

    def run(pipe):
        return pipe(demo_image(), "waves", generator=torch.Generator().manual_seed(0), **kw)

    no_lora = run(streamed)  # packs the host copies
    plain.load_lora(path, 0.8)
    packed = {p: p.data_ptr() for p in streamed.transformer.parameters()}
    streamed.load_lora(path, 0.8)
    assert all(p.data_ptr() == ptr for p, ptr in packed.items())  # merged into the packed host copies themselves
    with_lora = run(plain)
    assert (with_lora - no_lora).abs().max() > 1e-3
    assert torch.equal(run(streamed), with_lora)
    streamed.unload_lora()
    assert torch.equal(run(streamed), no_lora)
    streamed.load_lora(path, 0.8, live=True)
    live = run(streamed)
    assert (live - with_lora).abs().max() < 1e-5
    streamed.unload_lora()
    assert torch.equal(run(streamed), no_lora)
