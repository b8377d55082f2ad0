"""Loading a converted folder checks every file against manifest.json's SHA-256: damaged or modified weights are
refused with one line naming the file, never loaded into a silently wrong (or black) video."""
import json
import re
import shutil

import pytest
import torch

import framepack_native.weights as weights
from framepack_native import FramePackPipeline
from framepack_native.files import sha256
from framepack_native.models import HunyuanVideoVAE, LlamaTextEncoder
from framepack_native.models.loading import MANIFEST, save_pretrained
from framepack_native.models.vae import HunyuanVideoVAEConfig
from framepack_native.weights import CheckpointError, Checkpoint, save_safetensors
from tests.reference.pipeline import build_pipeline
from weights_convert import convert


@pytest.fixture(scope="module")
def converted(reference_store, tmp_path_factory):
    src = reference_store.get("pipeline_tiny", lambda p: build_pipeline(p, layout="pipeline"))
    return convert(src, tmp_path_factory.mktemp("checksums") / "model")


@pytest.fixture
def model(converted, tmp_path):
    """A private copy of the converted tiny pipeline, to damage."""
    return shutil.copytree(converted, tmp_path / "model")


def _flip(path, offset_from_end=100):
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end] ^= 0x10  # a low mantissa bit of some weight: finite, plausible, wrong
    path.write_bytes(bytes(raw))


def _message(path, root):
    return (f"{path}: checksum differs from manifest.json: damaged or modified (re-convert, or python -m "
            f"weights_convert --verify {root})")


@pytest.mark.parametrize("where", ["root", "component"])
def test_a_flipped_byte_is_refused_naming_the_file(model, where):
    HunyuanVideoVAE.from_pretrained(model / "vae", dtype=torch.float32, device="cpu")  # whole: loads
    _flip(model / "vae" / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        HunyuanVideoVAE.from_pretrained(model if where == "root" else model / "vae", dtype=torch.float32,
                                        device="cpu")
    assert str(info.value) == _message(model / "vae" / "model.safetensors", model)


def test_the_pipeline_refuses_a_damaged_component(model):
    _flip(model / "text_encoder" / "model.safetensors", 5000)
    with pytest.raises(CheckpointError, match=re.escape(_message(model / "text_encoder" / "model.safetensors",
                                                                 model))):
        FramePackPipeline.from_pretrained(model, device="cpu")


def test_a_manifest_with_every_checksum_wrong_is_refused(model):
    manifest = json.loads((model / MANIFEST).read_text())
    for section in ("components", "aux"):
        for entry in manifest[section].values():
            entry["files"] = {name: "0" * 64 for name in entry["files"]}
    (model / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"checksum differs from manifest.json: damaged or modified"):
        FramePackPipeline.from_pretrained(model, device="cpu")
    with pytest.raises(CheckpointError, match=re.escape(_message(model / "vae" / "config.json", model))):
        HunyuanVideoVAE.from_pretrained(model / "vae", dtype=torch.float32, device="cpu")


def test_an_edited_config_is_refused(model):
    path = model / "vae" / "config.json"
    path.write_text(path.read_text().replace('"layers_per_block": 1', '"layers_per_block": 1 '))
    with pytest.raises(CheckpointError, match=re.escape(_message(path, model))):
        HunyuanVideoVAE.from_pretrained(model / "vae", dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("folder, name", [("tokenizer", "tokenizer_config.json"), ("tokenizer_2", "tokenizer.json")])
def test_a_damaged_tokenizer_file_is_refused(model, folder, name):
    path = model / folder / name
    path.write_bytes(path.read_bytes().replace(b"}", b"} ", 1))
    from framepack_native.tokenizers import CLIPTokenizer, LlamaTokenizer
    with pytest.raises(CheckpointError, match=re.escape(_message(path, model))):
        (LlamaTokenizer if folder == "tokenizer" else CLIPTokenizer).from_pretrained(model / folder)


def test_files_beside_the_manifest_must_be_listed_and_present(model):
    save_safetensors(model / "vae" / "extra.safetensors", {"x": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=re.escape(f"{model / 'vae' / 'extra.safetensors'}: not listed in "
                                                        f"{model / MANIFEST}")):
        HunyuanVideoVAE.from_pretrained(model / "vae", dtype=torch.float32, device="cpu")
    (model / "vae" / "extra.safetensors").unlink()
    (model / "vae" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=re.escape(f"{model / 'vae' / 'model.safetensors'}: missing (listed in "
                                                        f"{model / MANIFEST})")):
        HunyuanVideoVAE.from_pretrained(model / "vae", dtype=torch.float32, device="cpu")


def test_weights_are_hashed_as_they_are_read_in_file_order(model, monkeypatch):
    """The loader reads a converted file front to back, so its hash needs no second pass over the file."""
    def second_pass(path, *args):
        raise AssertionError(f"{path} hashed in a second pass")
    monkeypatch.setattr(weights, "sha256", second_pass)
    for cls, name in ((HunyuanVideoVAE, "vae"), (LlamaTextEncoder, "text_encoder")):
        cls.from_pretrained(model / name, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("damaged", [False, True])
def test_reads_out_of_file_order_are_checked_by_a_second_pass(tmp_path, damaged):
    state = {f"t{i}": torch.randn(64, 33) for i in range(5)}
    path = tmp_path / "m.safetensors"
    save_safetensors(path, state)
    digest = sha256(path)
    if damaged:
        _flip(path, 7)
    ckpt = Checkpoint([path], checksums={path: digest}, manifest=tmp_path / MANIFEST)
    for name in reversed(list(state)):
        ckpt.get(name)
    if damaged:
        with pytest.raises(CheckpointError, match=re.escape(_message(path, tmp_path))):
            ckpt.check_checksums()
    else:
        ckpt.check_checksums()


def test_a_component_folder_without_a_manifest_loads_unchecked(tmp_path):
    with torch.device("meta"):
        vae = HunyuanVideoVAE(HunyuanVideoVAEConfig.tiny())
    save_pretrained(vae.to_empty(device="cpu"), tmp_path / "vae")
    _flip(tmp_path / "vae" / "model.safetensors")  # nothing records what it held: it loads
    HunyuanVideoVAE.from_pretrained(tmp_path / "vae", dtype=torch.float32, device="cpu")


def test_the_check_can_be_turned_off(model, monkeypatch):
    _flip(model / "vae" / "model.safetensors")
    monkeypatch.setenv("FRAMEPACK_NATIVE_VERIFY", "0")
    HunyuanVideoVAE.from_pretrained(model / "vae", dtype=torch.float32, device="cpu")
    monkeypatch.setenv("FRAMEPACK_NATIVE_VERIFY", "1")
    with pytest.raises(CheckpointError, match="checksum differs from manifest.json"):
        HunyuanVideoVAE.from_pretrained(model / "vae", dtype=torch.float32, device="cpu")


def test_a_single_converted_component_is_checked(reference_store, tmp_path):
    src = reference_store.get("pipeline_tiny", lambda p: build_pipeline(p, layout="pipeline"))
    dst = convert(src / "vae", tmp_path / "vae")  # manifest.json beside config.json, path "."
    HunyuanVideoVAE.from_pretrained(dst, dtype=torch.float32, device="cpu")
    _flip(dst / "model.safetensors")
    with pytest.raises(CheckpointError, match=re.escape(_message(dst / "model.safetensors", dst))):
        HunyuanVideoVAE.from_pretrained(dst, dtype=torch.float32, device="cpu")
