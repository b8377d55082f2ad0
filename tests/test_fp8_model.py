"""fp8 transformers end to end (framepack_native/fp8.py, fp8_loading.py, weights_convert --dtype fp8), tiny random
FramePack transformer converted by weights_convert, CPU: fp8 checkpoints convert, verify and load; quantising at load
gives the converter's bits; damaged scales and unscaled fp8 tensors are refused with one line; LoRAs merge before
quantising (the same bits as a float32 merge, then quantised); offload streams the fp8 blocks; the CLI's --dtype fp8."""
import json

import pytest
import safetensors.torch
import torch

from framepack_native import offload
from framepack_native.cli import main
from framepack_native.demo import demo_image, demo_pipeline
from framepack_native.files import CheckpointError, sha256
from framepack_native.fp8 import FP8, block_linears, dequantize_fp8, fp8_layers, quantize_blocks, quantize_fp8
from framepack_native.lora_formats import LoRAError
from framepack_native.models import FramePackTransformer
from framepack_native.video import read_video
from tests.reference import lora as ref_lora
from tests.reference.common import rel_l2
from tests.reference.pipeline import build_pipeline
from tests.reference.transformer import TINY, builder, load, make_inputs
from weights_convert import convert
from weights_convert.folders import verify

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


@pytest.fixture(scope="module")
def folders(reference_store, tmp_path_factory):
    """(diffusers source, float32 native folder, fp8 native folder)."""
    src = reference_store.get("transformer_tiny", builder(TINY))
    root = tmp_path_factory.mktemp("fp8_tiny")
    return src, convert(src, root / "fp32"), convert(src, root / "fp8", "fp8")


def _load(folder, **kw):
    return FramePackTransformer.from_pretrained(folder, dtype=torch.float32, device="cpu", **kw)


def test_fp8_conversion_verifies_and_loads(folders):
    _, fp32, fp8 = folders
    entry = json.loads((fp8 / "manifest.json").read_text())["components"]["transformer"]
    float_model = _load(fp32)
    targets = [n for n, _ in block_linears(float_model)]
    assert entry["dtype"] == "mixed" and entry["dtypes"]["fp8"] == len(targets)
    verify(fp8)
    model = _load(fp8)
    layers = fp8_layers(model)
    assert sorted(layers) == sorted(targets)  # every Linear of the blocks, modulation included; nothing else
    state, ref = model.state_dict(), float_model.state_dict()
    for name in targets:  # the stored pair is the quantisation of the float32 weight
        q, scale = quantize_fp8(ref[name + ".weight"])
        assert torch.equal(state[name + ".weight"].view(torch.uint8), q.view(torch.uint8))
        assert torch.equal(state[name + ".scale_weight"], scale)
    for name, t in ref.items():  # everything else: the float32 value rounded to bf16, loaded in the compute dtype
        if name in state and state[name].dtype == torch.float32:
            assert torch.equal(state[name], t.bfloat16().float()), name
    # quantising a float32 folder at load gives the same fp8 layers
    quantised = _load(fp32, quantize="fp8").state_dict()
    for name in targets:
        for key in (name + ".weight", name + ".scale_weight"):
            assert quantised[key].dtype == state[key].dtype and torch.equal(quantised[key].float(), state[key].float())
    inputs = make_inputs(TINY, text_lens=[6, 3], seed=5)
    with torch.no_grad():
        err = rel_l2(model(**inputs), float_model(**inputs))
    assert 1e-4 < err < 0.05  # fp8 is in use, and close (the real-width bound: tests/test_fp8_real_width.py)


def _lone_copy(folder, dst, change=None):
    """The transformer of a converted folder copied without its manifest (no checksums), tensors changed by
    change(state) first."""
    dst.mkdir()
    (dst / "config.json").write_text((folder / "config.json").read_text())
    state = safetensors.torch.load_file(folder / "model.safetensors")
    if change:
        change(state)
    safetensors.torch.save_file(state, dst / "model.safetensors")
    return dst


SCALE = "double_blocks.0.img_attn.qkv.scale_weight"
DAMAGE = {
    "wrong shape": (lambda s: s.__setitem__(SCALE, s[SCALE][:, :0].contiguous()), "mis-shaped"),
    "zero": (lambda s: s[SCALE].__setitem__((0, 0), 0.0), "zero, negative, NaN"),
    "NaN": (lambda s: s[SCALE].__setitem__((1, 0), float("nan")), "zero, negative, NaN"),
    "float32": (lambda s: s.__setitem__(SCALE, s[SCALE].float()), "must be bfloat16"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_scales_are_refused_naming_the_tensor(folders, tmp_path, damage):
    change, message = DAMAGE[damage]
    lone = _lone_copy(folders[2], tmp_path / "lone", change)
    with pytest.raises(CheckpointError, match=message) as e:
        _load(lone)
    assert "double_blocks.0.img_attn.qkv" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("damage", ["zero", "NaN"])
def test_verify_refuses_damaged_scales(folders, tmp_path, damage):
    root = _damaged_copy(folders[2], tmp_path / "copy", DAMAGE[damage][0])
    with pytest.raises(CheckpointError, match=f"{SCALE[:-len('.scale_weight')]}.weight: its scale holds"):
        verify(root)


def test_fp8_tensors_without_scales_are_refused(folders, tmp_path):
    def unscaled(state):
        del state[SCALE]
    with pytest.raises(CheckpointError, match="float8_e4m3fn without its scales"):
        _load(_lone_copy(folders[2], tmp_path / "a", unscaled))

    def fp8_norm(state):  # a norm stored in fp8: nothing could scale it
        name = "double_blocks.0.img_attn.norm_q.weight"
        state[name] = state[name].to(FP8)
    with pytest.raises(CheckpointError, match="norm_q.weight.*float8_e4m3fn without its scales"):
        _load(_lone_copy(folders[2], tmp_path / "b", fp8_norm))


def test_loras_merge_before_quantising(reference_store, folders, tmp_path):
    src, fp32, fp8 = folders
    shapes = ref_lora.module_shapes(dict(load(src).config))
    a = ref_lora.save(tmp_path / "a.safetensors", ref_lora.random_peft(shapes, seed=1))
    b = ref_lora.save(tmp_path / "b.safetensors", ref_lora.random_peft(shapes, seed=2, magnitude=0.2))
    loaded = _load(fp32, quantize="fp8", loras=[(a, 0.7), b])
    merged = _load(fp32)
    merged.load_lora(a, 0.7)
    merged.load_lora(b)
    expected = merged.state_dict()  # float32 merges, then the same quantisation
    quantize_blocks(merged)
    got, want = loaded.state_dict(), merged.state_dict()
    assert list(got) == list(want)
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k].float(), want[k].float()) for k in got)
    unmerged = _load(fp32, quantize="fp8").state_dict()
    assert not torch.equal(unmerged["double_blocks.0.img_attn.qkv.weight"].float(),
                           got["double_blocks.0.img_attn.qkv.weight"].float())  # the LoRA is in the fp8 values
    assert not torch.equal(_load(fp32).state_dict()["final_layer.linear.weight"],
                           got["final_layer.linear.weight"])  # and in the float layers it touches
    assert torch.equal(got["final_layer.linear.weight"], expected["final_layer.linear.weight"])
    with pytest.raises(LoRAError, match="merge before quantising to fp8"):
        loaded.load_lora(a)  # an fp8 model takes no more LoRAs
    with pytest.raises(CheckpointError, match="holds fp8 weights, and LoRAs merge before quantising"):
        _load(fp8, loras=[a])
    with pytest.raises(ValueError, match="quantize must be one of"):
        _load(fp32, quantize="int8")


def test_offload_streams_fp8_blocks_and_halves_their_host_copies():
    kw = dict(height=32, width=48, num_frames=9, latent_window_size=2, num_inference_steps=2)

    def run(fp8, offloaded):
        pipe = demo_pipeline(seed=3)
        if fp8:
            quantize_blocks(pipe.transformer)
        pipe.offload = offloaded
        video = pipe(demo_image(), "waves", generator=torch.Generator().manual_seed(0), **kw)
        blocks = [b for name in offload.BLOCK_LISTS for b in getattr(pipe.transformer, name)]
        tensors = [t for b in blocks for t in list(b.parameters()) + list(b.buffers())]
        held = sum(t.numel() * t.element_size() for t in tensors)
        if offloaded:  # the packed host buffers hold them (rounded up to a power of two)
            assert held <= sum(offload.host_buffers(pipe.transformer)) < 2 * held + 512 * len(tensors)
            assert all(t.device.type == "cpu" for t in tensors)
        return video, held

    plain, _ = run(True, False)
    streamed, fp8_bytes = run(True, True)
    assert torch.equal(plain, streamed)
    exact, float_bytes = run(False, True)
    assert not torch.equal(plain, exact) and (plain - exact).abs().max() < 0.1
    # the demo's blocks are float32: fp8 (1 byte + 2 per row of <= 128 inputs) is about a quarter, plus the biases
    assert fp8_bytes < 0.4 * float_bytes


@pytest.fixture(scope="module")
def fp8_pipeline(reference_store, tmp_path_factory):
    src = reference_store.get("pipeline_tiny", lambda p: build_pipeline(p, layout="pipeline"))
    return convert(src, tmp_path_factory.mktemp("fp8_pipeline") / "model", "fp8")


GENERATE = ["--prompt", "a boat", "--height", "32", "--width", "48", "--num-frames", "9", "--window", "3", "--steps",
            "2", "--device", "cpu", "--sampler", "euler"]


def test_cli_dtype_fp8(fp8_pipeline, tmp_path):
    out, exact = tmp_path / "fp8.mp4", tmp_path / "exact.mp4"
    assert main(["generate", "--demo", "--dtype", "fp8", "--out", str(out)]) == 0
    assert main(["generate", "--demo", "--out", str(exact)]) == 0
    a, b = read_video(out).astype(float), read_video(exact).astype(float)
    assert a.shape == b.shape == (37, 64, 96, 3)
    assert 0 < abs(a - b).mean() < 8  # fp8 was used, and the video stays close to the exact one
    image = tmp_path / "in.png"
    from PIL import Image
    Image.fromarray(read_video(exact)[0]).save(image)
    video = tmp_path / "model.mp4"
    assert main(["generate", "--model", str(fp8_pipeline), "--image", str(image), *GENERATE, "--out",
                 str(video)]) == 0
    assert read_video(video).shape == (13, 32, 48, 3)


def _damaged_copy(root, dst, change):
    """A converted folder copied with its transformer's tensors changed and the manifest re-hashed (so that only the
    values are wrong)."""
    import shutil
    shutil.copytree(root, dst)
    entry = json.loads((root / "manifest.json").read_text())["components"]["transformer"]
    folder = dst / entry["path"]
    state = safetensors.torch.load_file(folder / "model.safetensors")
    change(state)
    safetensors.torch.save_file(state, folder / "model.safetensors")
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["components"]["transformer"]["files"]["model.safetensors"] = sha256(folder / "model.safetensors")
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_damaged_scales_at_the_command_lines(fp8_pipeline, tmp_path, capsys):
    from weights_convert.__main__ import main as convert_main
    damaged = _damaged_copy(fp8_pipeline, tmp_path / "damaged", DAMAGE["NaN"][0])
    image = tmp_path / "in.png"
    from PIL import Image
    Image.new("RGB", (48, 32)).save(image)
    capsys.readouterr()
    for command in (lambda: convert_main(["--verify", str(damaged)]),
                    lambda: main(["generate", "--model", str(damaged), "--image", str(image), *GENERATE, "--out",
                                  str(tmp_path / "x.mp4")])):
        code = command()
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
        assert "double_blocks.0.img_attn.qkv.weight: its scale holds zero, negative, NaN" in lines[0]
    assert not (tmp_path / "x.mp4").exists()


def test_dequantised_weights_are_what_the_layers_multiply(folders):
    model = _load(folders[2])
    layer = model.single_blocks[0].linear1
    x = torch.randn(2, 7, layer.in_features)
    w = dequantize_fp8(layer.weight, layer.scale_weight, torch.float32)
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, w, layer.bias))


def test_llama_text_encoder_in_fp8(reference_store, tmp_path_factory):
    from framepack_native.models import LlamaTextEncoder
    from tests.reference.encoders import LLAMA_TINY, build_llama, converted
    _, dst = converted(reference_store, tmp_path_factory, "llama_tiny_gqa", build_llama, LLAMA_TINY)
    exact = LlamaTextEncoder.from_pretrained(dst, dtype=torch.float32, device="cpu")
    fp8 = LlamaTextEncoder.from_pretrained(dst, dtype=torch.float32, device="cpu", quantize="fp8")
    layers = fp8_layers(fp8)
    assert sorted(layers) == sorted(n for n, _ in block_linears(exact))  # every Linear of the decoder layers
    assert {n.split(".")[-1] for n in layers} == {"qkv", "out", "gate_up", "down"}
    assert fp8.embed.weight.dtype == torch.float32 and fp8.norm.weight.dtype == torch.float32
    ids = torch.randint(0, LLAMA_TINY["vocab_size"], (2, 19), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        err = rel_l2(fp8(ids, mask, hidden_state_index=-3), exact(ids, mask, hidden_state_index=-3))
    assert 1e-4 < err < 0.1  # quantised, and close (a tiny model: few layers)


def test_cli_fp8_llm(fp8_pipeline, tmp_path, monkeypatch):
    from framepack_native.pipeline import FramePackPipeline
    loaded = []
    real = FramePackPipeline.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        pipe = real(cls, *args, **kwargs)
        loaded.append(pipe)
        return pipe
    monkeypatch.setattr(FramePackPipeline, "from_pretrained", classmethod(spy))
    image = tmp_path / "in.png"
    from PIL import Image
    Image.new("RGB", (48, 32), (120, 30, 200)).save(image)
    assert main(["generate", "--model", str(fp8_pipeline), "--image", str(image), "--fp8-llm", *GENERATE, "--out",
                 str(tmp_path / "x.mp4")]) == 0
    (pipe,) = loaded
    assert fp8_layers(pipe.text_encoder) and fp8_layers(pipe.transformer)  # fp8 as converted, the Llama at load
    assert read_video(tmp_path / "x.mp4").shape == (13, 32, 48, 3)


@pytest.mark.parametrize("quantize", [None, "fp8"])
def test_the_float32_output_head_takes_loras_in_float32(folders, tmp_path, quantize):
    src, fp32, _ = folders
    shapes = ref_lora.module_shapes(dict(load(src).config))
    lora = ref_lora.save(tmp_path / "a.safetensors", ref_lora.random_peft(shapes, seed=3))
    model = FramePackTransformer.from_pretrained(fp32, dtype=torch.bfloat16, device="cpu", quantize=quantize,
                                                 loras=[lora], fp32_modules=("final_layer.linear",))
    exact = _load(fp32)
    exact.load_lora(lora)  # float32 load, float32 merge
    head = model.final_layer.linear
    assert not torch.equal(exact.final_layer.linear.weight, _load(fp32).final_layer.linear.weight)  # touched
    assert head.weight.dtype == torch.float32 and model.final_layer.modulation.weight.dtype == torch.bfloat16
    assert torch.equal(head.weight, exact.final_layer.linear.weight)  # not rounded through bf16
    assert torch.equal(head.bias, exact.final_layer.linear.bias)
    if quantize is None:
        model.unload_lora()  # the merge happened in float32: it comes off exactly
        assert torch.equal(head.weight, _load(fp32).final_layer.linear.weight)


def test_an_fp8_folder_is_hashed_in_one_pass(folders, monkeypatch):
    import framepack_native.weights as weights
    rehashed = []
    monkeypatch.setattr(weights, "sha256", lambda path: rehashed.append(path))  # the fallback: a second read
    model = _load(folders[2])  # its files in the order it loads them: each hashed as it is read
    assert fp8_layers(model) and rehashed == []
