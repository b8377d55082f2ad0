"""python -m weights_convert on a whole download: HunyuanVideo pipeline + FramePack transformer + flux_redux
image encoder, sharded with index files, as users download them; then hostile inputs, each refused with one
line, exit code 2, and nothing left at DST."""
import json
import shutil
import struct

import pytest
import safetensors.torch
import torch

from framepack_native import FramePackPipeline
from framepack_native.weights import CheckpointError, open_checkpoint
from tests.reference.pipeline import build_pipeline
from weights_convert.__main__ import main
from weights_convert.core import apply_step, build_plan
from weights_convert.registry import converters


@pytest.fixture(scope="module")
def download(reference_store):
    root = reference_store.get("pipeline_download", lambda p: build_pipeline(p, layout="download"))
    return {"src": root / "HunyuanVideo", "transformer": root / "FramePackI2V_HY", "image_encoder": root / "flux_redux_bfl"}


def cli(download, dst, *extra, transformer=None):
    return main([str(download["src"]), str(dst), "--transformer", str(transformer or download["transformer"]),
                 "--image-encoder", str(download["image_encoder"]), *extra])


@pytest.fixture(scope="module")
def converted(download, tmp_path_factory):
    dst = tmp_path_factory.mktemp("conv") / "native"
    assert cli(download, dst, "--dtype", "bf16") == 0
    return dst


def test_download_layout_is_sharded(download):
    for folder in (download["src"] / "text_encoder", download["transformer"], download["image_encoder"] / "image_encoder"):
        assert list(folder.glob("*.safetensors.index.json")), folder
        assert len(list(folder.glob("*.safetensors"))) > 1, folder


def test_manifest_and_every_tensor_as_the_plan_says(download, converted):
    """The folder path (index files, shards, bf16, manifest) writes, for every tensor, what the component's plan
    computes from the sources. The plans' rules themselves are checked by the models' parity tests and below."""
    manifest = json.loads((converted / "manifest.json").read_text())
    assert sorted(manifest["components"]) == ["image_encoder", "text_encoder", "text_encoder_2", "transformer", "vae"]
    assert sorted(manifest["aux"]) == ["feature_extractor", "scheduler", "tokenizer", "tokenizer_2"]
    assert manifest["sampling_type"] == "inverted_anti_drifting"
    assert {e["dtype"] for e in manifest["components"].values()} == {"bf16"}  # --dtype bf16 cast the fp32 download
    sources = {"transformer": download["transformer"], "image_encoder": download["image_encoder"] / "image_encoder",
               **{n: download["src"] / n for n in ("text_encoder", "text_encoder_2", "vae")}}
    by_component = {c.component: c for c in converters()}
    checked = 0
    for name, src in sources.items():
        conv = by_component[name]
        native_cfg = json.loads((converted / name / "config.json").read_text())["config"]
        src_ckpt, ours = open_checkpoint(src), open_checkpoint(converted / name)
        steps = build_plan(conv.rules(native_cfg), {k: src_ckpt.shape(k) for k in src_ckpt.keys()})
        assert sorted(s.dst for s in steps) == sorted(ours.keys())
        for step in steps:
            want = apply_step(step, [src_ckpt.get(k) for k in step.srcs])
            got = ours.get(step.dst)
            assert got.dtype == (torch.bfloat16 if want.is_floating_point() else want.dtype), step.dst
            assert torch.equal(got, want.to(got.dtype)), step.dst
            checked += 1
    assert checked > 100


def _raw(folder):
    """Every tensor of a sharded source folder, read by safetensors itself."""
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in safetensors.torch.load_file(f).items()}


def test_fused_and_reordered_tensors_from_the_raw_shards(download, converted):
    """Hand-derived from the downloaded shards: fused q/k/v(/mlp) rows and the final layer's swapped halves."""
    src, ours = _raw(download["transformer"]), open_checkpoint(converted / "transformer")
    llama_src, llama = _raw(download["src"] / "text_encoder"), open_checkpoint(converted / "text_encoder")
    dual, single = "transformer_blocks.0", "single_transformer_blocks.1"
    half = src["norm_out.linear.weight"].shape[0] // 2
    expected = {
        "double_blocks.0.img_attn.qkv.weight": torch.cat([src[f"{dual}.attn.to_{x}.weight"] for x in "qkv"]),
        "double_blocks.0.txt_attn.qkv.bias": torch.cat([src[f"{dual}.attn.add_{x}_proj.bias"] for x in "qkv"]),
        "single_blocks.1.linear1.weight": torch.cat([src[f"{single}.attn.to_{x}.weight"] for x in "qkv"]
                                                    + [src[f"{single}.proj_mlp.weight"]]),
        # diffusers stores (scale, shift), the native layer (shift, scale)
        "final_layer.modulation.weight": torch.cat([src["norm_out.linear.weight"][half:],
                                                    src["norm_out.linear.weight"][:half]]),
    }
    for name, want in expected.items():
        assert torch.equal(ours.get(name), want.to(torch.bfloat16)), name
    want = torch.cat([llama_src[f"layers.0.self_attn.{x}_proj.weight"] for x in "qkv"])
    assert torch.equal(llama.get("layers.0.attn.qkv.weight"), want.to(torch.bfloat16))


def test_converted_download_generates(converted, capsys):
    assert main(["--verify", str(converted)]) == 0
    pipe = FramePackPipeline.from_pretrained(converted, dtype=torch.float32, device="cpu")
    assert pipe.sampling_type == "inverted_anti_drifting"
    video = pipe(torch.rand(3, 40, 56), "a lighthouse", height=32, width=48, num_frames=5, latent_window_size=2,
                 num_inference_steps=2, sampler="unipc", generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 9, 3, 32, 48) and torch.isfinite(video).all()


@pytest.mark.parametrize("file, text, message", [
    ("scheduler/scheduler_config.json", '{"shift": "x"}', "field 'shift' must be a finite number, got \"x\""),
    ("scheduler/scheduler_config.json", '{"shift": NaN}', "field 'shift' must be a finite number, got NaN"),
    ("scheduler/scheduler_config.json", "{", "not valid JSON"),
    ("tokenizer/tokenizer_config.json", "[]", "expected a JSON object at the top level, got a list"),
    ("text_encoder_2/config.json", '{"class": "CLIPTextEncoder", "format_version": 1, "config": {"hidden_size": 6.5}}',
     "field 'hidden_size' must be an integer, got 6.5"),
])
def test_damaged_config_in_a_converted_folder_named(converted, tmp_path, file, text, message):
    root = tmp_path / "native"
    shutil.copytree(converted, root)
    (root / file).write_text(text)
    with pytest.raises(CheckpointError) as info:
        FramePackPipeline.from_pretrained(root, dtype=torch.float32, device="cpu")
    assert str(info.value).startswith(f"{root / file}: ") and message in str(info.value), str(info.value)


def _sampling(dst):
    manifest = json.loads((dst / "manifest.json").read_text())
    return manifest["sampling_type"], manifest["sampling_type_source"]


def test_f1_download_defaults_to_vanilla(download, tmp_path, capsys):
    f1 = tmp_path / "FramePack_F1_I2V_HY_20250503"
    shutil.copytree(download["transformer"], f1)
    assert main([str(f1), str(tmp_path / "out")]) == 0
    assert _sampling(tmp_path / "out") == ("vanilla", "folder name 'FramePack_F1_I2V_HY_20250503'")
    assert capsys.readouterr().out == (f"wrote {tmp_path / 'out'} (sampling type vanilla: folder name "
                                       "'FramePack_F1_I2V_HY_20250503')\n")
    assert main([str(f1), str(tmp_path / "out2"), "--sampling-type", "inverted_anti_drifting"]) == 0
    assert _sampling(tmp_path / "out2") == ("inverted_anti_drifting", "--sampling-type")


def test_sampling_type_ignores_the_parent_folders(download, converted, tmp_path):
    """An I2V transformer kept under a folder whose name says F1 is still inverted anti-drifting."""
    i2v = tmp_path / "FramePack_F1_vs_I2V" / "FramePackI2V_HY"
    shutil.copytree(download["transformer"], i2v)
    assert main([str(i2v), str(tmp_path / "out")]) == 0
    assert _sampling(tmp_path / "out") == ("inverted_anti_drifting",
                                           "default (folder name 'FramePackI2V_HY' does not say F1)")
    assert _sampling(converted) == ("inverted_anti_drifting", "default (folder name 'FramePackI2V_HY' does not say F1)")


def _first_shard(folder):
    return sorted(folder.glob("*.safetensors"))[0]


def _rewrite_header(path, edit, length=None):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", length if length is not None else len(new)) + new + raw[8 + n:])


def _first_tensor(header):
    return next(k for k in header if k != "__metadata__")


def hostile(case, transformer):
    shard = _first_shard(transformer)
    if case == "offsets_past_end":
        def edit(h):
            h[_first_tensor(h)]["data_offsets"][1] += 10**9
        _rewrite_header(shard, edit)
        return "past the data section"
    if case == "overlapping_ranges":
        def edit(h):
            names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
            a, b = names[0], names[1]
            h[b]["data_offsets"] = list(h[a]["data_offsets"])
            h[b]["shape"], h[b]["dtype"] = h[a]["shape"], h[a]["dtype"]
        _rewrite_header(shard, edit)
        return "overlap"
    if case == "huge_header_length":
        _rewrite_header(shard, lambda h: None, length=2**63)
        return "larger than the"
    if case == "pickle_shard":
        index = next(transformer.glob("*.index.json"))
        doc = json.loads(index.read_text())
        first = sorted(set(doc["weight_map"].values()))[0]
        doc["weight_map"] = {k: ("pytorch_model-00001.bin" if v == first else v) for k, v in doc["weight_map"].items()}
        index.write_text(json.dumps(doc))
        (transformer / "pytorch_model-00001.bin").write_bytes(b"\x80\x04\x95 not unpickled")
        return "never loaded"
    if case == "unknown_architecture":
        cfg = json.loads((transformer / "config.json").read_text())
        cfg["_class_name"] = "SomeOtherVideoTransformer"
        (transformer / "config.json").write_text(json.dumps(cfg))
        return "unknown architecture SomeOtherVideoTransformer"
    if case == "config_weight_mismatch":
        cfg = json.loads((transformer / "config.json").read_text())
        cfg["num_single_layers"] += 1
        (transformer / "config.json").write_text(json.dumps(cfg))
        return "missing"
    if case == "integer_weight":  # same bytes, relabelled: only a dtype check can catch it
        def edit(h):
            name = _first_tensor(h)
            h[name]["dtype"] = {"F32": "I32", "BF16": "I16", "F16": "I16"}[h[name]["dtype"]]
        _rewrite_header(shard, edit)
        return "the model needs a floating-point dtype"
    if case == "truncated_shard":
        shard.write_bytes(shard.read_bytes()[:-100])
        return "truncated"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["offsets_past_end", "overlapping_ranges", "huge_header_length", "pickle_shard",
                                  "unknown_architecture", "config_weight_mismatch", "truncated_shard",
                                  "integer_weight"])
def test_hostile_input_refused(download, tmp_path, case, capsys):
    transformer = tmp_path / "FramePackI2V_HY"
    shutil.copytree(download["transformer"], transformer)
    message = hostile(case, transformer)
    dst = tmp_path / "out" / "native"
    assert cli(download, dst, transformer=transformer) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists()  # nor the parent folder conversion had to create


def test_existing_destination_refused(download, tmp_path, capsys):
    dst = tmp_path / "native"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep")
    assert cli(download, dst) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in dst.iterdir()] == ["precious.txt"]
