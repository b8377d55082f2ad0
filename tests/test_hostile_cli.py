"""Issue 22 through the command line, in a subprocess: hostile headers, damaged weights, out-of-range configs and
damaged tokenizer files end in exit code 2 and exactly one stderr line starting "error: ", no traceback, no output."""
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from framepack_native.files import sha256
from framepack_native.models.loading import MANIFEST
from tests.reference.pipeline import build_pipeline
from weights_convert import convert

ROOT = Path(__file__).resolve().parent.parent
Q = "transformer_blocks.0.attn.to_q.weight"  # a diffusers tensor fused into the native qkv


@pytest.fixture(scope="module")
def source(reference_store):
    return reference_store.get("pipeline_tiny", lambda p: build_pipeline(p, layout="pipeline"))


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    return convert(source, tmp_path_factory.mktemp("hostile_cli") / "model")


def _run(*args):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


def _one_error_line(code, stderr):
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, stderr[-3000:])
    return lines[0]


def _nested(path):
    raw = b'{"w": {"dtype": "F32", "shape": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def _relabel(path, name, **fields):
    """Rewrite one tensor's header entry, keeping the data section."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header[name].update(fields)
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def _convert(src, tmp_path):
    code, err = _run("-m", "weights_convert", str(src), str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()
    return _one_error_line(code, err)


def test_convert_nested_header(source, tmp_path):
    src = shutil.copytree(source / "vae", tmp_path / "vae")
    _nested(src / "diffusion_pytorch_model.safetensors")
    assert _convert(src, tmp_path) == (f"error: {src / 'diffusion_pytorch_model.safetensors'}: header is not valid "
                                       "JSON (nested too deeply)")


def test_convert_empty_dimension_beside_a_huge_one(source, tmp_path):
    src = shutil.copytree(source / "transformer", tmp_path / "transformer")
    weights = src / "diffusion_pytorch_model.safetensors"
    raw = weights.read_bytes()
    start = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])[Q]["data_offsets"][0]
    _relabel(weights, Q, shape=[0, 2**70], data_offsets=[start, start])
    assert _convert(src, tmp_path).startswith(f"error: {weights}: tensor {Q!r} has shape [0, {2**70}]: its sizes "
                                              "multiply past 2**63 - 1 bytes")


def test_convert_shape_that_lies_keeping_the_byte_count(source, tmp_path):
    src = shutil.copytree(source / "transformer", tmp_path / "transformer")
    weights = src / "diffusion_pytorch_model.safetensors"
    _relabel(weights, Q, shape=[16, 64])  # 32 x 32 float32 stored: same bytes
    line = _convert(src, tmp_path)
    assert line.startswith(f"error: {weights}: tensors {Q!r} (16, 64), "), line
    assert "cannot make 'double_blocks.0.img_attn.qkv.weight' (cat0): Sizes of tensors must match" in line


def test_convert_layer_count_past_the_range(source, tmp_path):
    src = shutil.copytree(source / "text_encoder", tmp_path / "text_encoder")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 300_000}))
    assert _convert(src, tmp_path) == (f"error: {src / 'config.json'}: LlamaConfig: num_hidden_layers must be >= 1 "
                                       "and <= 1024, got 300000")


# --- generate ---------------------------------------------------------------------------------------------------

@pytest.fixture
def model(converted, tmp_path):
    return shutil.copytree(converted, tmp_path / "model")


def _rehash(model):
    """Make the manifest agree with the folder again: a hostile folder, not a damaged one."""
    manifest = json.loads((model / MANIFEST).read_text())
    for section in ("components", "aux"):
        for entry in manifest[section].values():
            folder = model / entry["path"]
            entry["files"] = {f.name: sha256(f) for f in sorted(folder.iterdir()) if f.is_file()
                              and f.name != MANIFEST}
    (model / MANIFEST).write_text(json.dumps(manifest))


def _generate(model, tmp_path):
    image = tmp_path / "in.png"
    PIL.Image.fromarray((np.random.RandomState(0).rand(40, 60, 3) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "out.mp4"
    start = time.perf_counter()
    code, err = _run("-m", "framepack_native.cli", "generate", "--model", str(model), "--image", str(image),
                     "--prompt", "x", "--height", "32", "--width", "48", "--num-frames", "9", "--window", "3",
                     "--steps", "1", "--device", "cpu", "--sampler", "euler", "--out", str(out))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "model"]
    return _one_error_line(code, err), time.perf_counter() - start


def test_generate_nested_header(model, tmp_path):
    _nested(model / "vae" / "model.safetensors")
    _rehash(model)
    line, _ = _generate(model, tmp_path)
    assert line == f"error: {model / 'vae' / 'model.safetensors'}: header is not valid JSON (nested too deeply)"


def test_generate_flipped_byte(model, tmp_path):
    weights = model / "vae" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-4001] ^= 0x10  # finite and plausible: before issue 22 this made a wrong video with exit code 0
    weights.write_bytes(bytes(raw))
    line, _ = _generate(model, tmp_path)
    assert line == (f"error: {weights}: checksum differs from manifest.json: damaged or modified (re-convert, or "
                    f"python -m weights_convert --verify {model})")


def test_generate_manifest_with_every_checksum_wrong(model, tmp_path):
    manifest = json.loads((model / MANIFEST).read_text())
    for section in ("components", "aux"):
        for entry in manifest[section].values():
            entry["files"] = {name: "0" * 64 for name in entry["files"]}
    (model / MANIFEST).write_text(json.dumps(manifest))
    line, _ = _generate(model, tmp_path)
    assert line.endswith(f": checksum differs from manifest.json: damaged or modified (re-convert, or python -m "
                         f"weights_convert --verify {model})")


@pytest.mark.parametrize("fields, message", [
    ({"hidden_size": -32}, "LlamaConfig: hidden_size must be >= 1 and <= 65536, got -32"),
    ({"num_hidden_layers": 300_000}, "LlamaConfig: num_hidden_layers must be >= 1 and <= 1024, got 300000"),
    ({"num_hidden_layers": 1000}, "field 'num_hidden_layers' asks for 1000 layers.N, but "),
])
def test_generate_config_out_of_range(model, tmp_path, fields, message):
    path = model / "text_encoder" / "config.json"
    doc = json.loads(path.read_text())
    doc["config"].update(fields)
    path.write_text(json.dumps(doc))
    _rehash(model)
    line, seconds = _generate(model, tmp_path)
    assert line.startswith(f"error: {path}: {message}"), line
    assert seconds < 60  # refused before anything is built (it ran for minutes, taking gigabytes)


def test_generate_damaged_merges_txt(model, tmp_path):
    folder = model / "tokenizer_2"
    doc = json.loads((folder / "tokenizer.json").read_text())
    (folder / "vocab.json").write_text(json.dumps(doc["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in doc["model"]["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges[:50]) + "\nq \xff\n" + "\n")
    _rehash(model)
    line, _ = _generate(model, tmp_path)
    assert line.startswith(f"error: {folder / 'merges.txt'}: does not fit {folder / 'vocab.json'} (merge 'q' 'ÿ'")
