"""Damaged JSON around the weights: every reader names the file (and the field), never a raw TypeError.

Native configs, manifests, tokenizer and scheduler configs, index files and the source configs the converters
read; each case fails before any weights are read, so no model is built except one tiny VAE folder.
"""
import dataclasses
import json
import math
import re
import shutil
import sys

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings, strategies as st

from framepack_native import FramePackPipeline
from framepack_native.models import (CLIPTextEncoder, FramePackTransformer, HunyuanVideoVAE, LlamaTextEncoder,
                                     SiglipVisionEncoder)
from framepack_native.models.loading import MANIFEST, read_manifest, save_pretrained
from framepack_native.models.vae import HunyuanVideoVAEConfig
from framepack_native.sampling import FlowMatchConfig
from framepack_native.tokenizers import CLIPTokenizer, LlamaTokenizer
from framepack_native.configs import config_from_dict, read_json
from framepack_native.weights import CheckpointError, open_checkpoint
from weights_convert import ConversionError, convert, verify
from weights_convert.__main__ import main as convert_main

MODELS = (FramePackTransformer, HunyuanVideoVAE, LlamaTextEncoder, CLIPTextEncoder, SiglipVisionEncoder)


@pytest.mark.parametrize("raw, message", [
    (b"[]", "expected a JSON object at the top level, got a list"),
    (b"null", "expected a JSON object at the top level, got null"),
    (b"{", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
])
def test_read_json_names_the_file(tmp_path, raw, message):
    (tmp_path / "x.json").write_bytes(raw)
    with pytest.raises(CheckpointError, match=f"x.json: {message}"):
        read_json(tmp_path / "x.json")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("native") / "vae"
    with torch.device("meta"):
        model = HunyuanVideoVAE(HunyuanVideoVAEConfig.tiny())
    save_pretrained(model.to_empty(device="cpu"), path)
    return path


def _damaged_copy(vae_dir, tmp_path, edit):
    path = tmp_path / "vae"
    shutil.copytree(vae_dir, path)
    doc = json.loads((path / "config.json").read_text())
    edit(doc)
    (path / "config.json").write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(config=[]), "field 'config' must be an object, got []"),
    (lambda d: d["config"].update(layers_per_block=1.5), "field 'layers_per_block' must be an integer, got 1.5"),
    (lambda d: d["config"].update(layers_per_block=True), "field 'layers_per_block' must be an integer, got true"),
    (lambda d: d["config"].update(block_out_channels=16), "field 'block_out_channels' must be a list of integers"),
    (lambda d: d["config"].update(block_out_channels=None), "field 'block_out_channels' must be a list of integers"),
    (lambda d: d["config"].update(scaling_factor=float("nan")), "field 'scaling_factor' must be a finite number"),
    (lambda d: d["config"].update(layers_per_block=0), "HunyuanVideoVAEConfig: layers_per_block must be >= 1"),
])
def test_native_config_fields_are_checked(vae_dir, tmp_path, edit, message):
    path = _damaged_copy(vae_dir, tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        HunyuanVideoVAE.from_pretrained(path, dtype=torch.float32, device="cpu")
    assert str(info.value).startswith(f"{path / 'config.json'}: ") and message in str(info.value)


def test_folder_named_like_a_weights_file(vae_dir, tmp_path):
    path = tmp_path / "vae"
    shutil.copytree(vae_dir, path)
    (path / "model.safetensors").unlink()
    (path / "model.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors: is a folder, not a safetensors file"):
        HunyuanVideoVAE.from_pretrained(path, dtype=torch.float32, device="cpu")


def test_transformer_float_layer_count():
    with pytest.raises(CheckpointError, match="t.json: field 'num_layers' must be an integer, got 1.0"):
        config_from_dict(FramePackTransformer.config_class, {"num_layers": 1.0}, "t.json")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=8)


def _fits(value, kind):
    """The test's own reading of the type rule (not configs.is_kind): JSON true/false are not numbers, an integer
    is a float if float() can hold it, a float must be finite, a tuple field takes a list of its default's kind."""
    if kind is int:
        return type(value) is int
    if kind is float:
        return (type(value) is int and abs(value) <= sys.float_info.max) or (
            type(value) is float and math.isfinite(value))
    if kind in (bool, str):
        return type(value) is kind
    return True  # other annotations: any value (the class' own checks may still refuse it)


def _acceptable(value, field):
    if field.type is tuple:
        items = type(field.default[0]) if isinstance(field.default, tuple) and field.default else None
        return type(value) is list and all(_fits(v, items) for v in value)
    return _fits(value, field.type)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_json_value_in_any_config_field_gives_a_checkpoint_error_or_a_config(data):
    config_class = data.draw(st.sampled_from([m.config_class for m in MODELS] + [FlowMatchConfig]))
    field = data.draw(st.sampled_from(dataclasses.fields(config_class)))
    value = data.draw(JSON_VALUES)
    try:
        config = config_from_dict(config_class, {field.name: value}, "c.json")
    except CheckpointError as e:
        assert str(e).startswith("c.json: ")
        if not _acceptable(value, field):
            assert f"field {field.name!r} must be" in str(e)
        return
    assert _acceptable(value, field)
    assert getattr(config, field.name) == (tuple(value) if isinstance(value, list) else value)


def _manifest():
    entry = {"class": "HunyuanVideoVAE", "path": "vae", "files": {"config.json": "0" * 64}}
    return {"format": "framepack_native", "format_version": 1, "components": {"vae": entry},
            "aux": {"scheduler": {"path": "scheduler", "files": {}}}, "sampling_type": None}


def _set(path, value):
    def edit(doc):
        *parents, last = path
        for key in parents:
            doc = doc[key]
        doc[last] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.clear(), "not a framepack_native manifest"),
    (_set(["components"], []), "field 'components' must be an object, got []"),
    (_set(["aux"], None), "field 'aux' must be an object, got null"),
    (_set(["components", "vae"], 5), "field 'components.vae' must be an object, got 5"),
    (_set(["components", "vae", "path"], None), "field 'components.vae.path' must be a string, got null"),
    (_set(["components", "vae", "path"], "../../elsewhere"), "field 'components.vae.path' must be a path inside"),
    (_set(["components", "vae", "class"], 3), "field 'components.vae.class' must be a string, got 3"),
    (lambda m: m["components"]["vae"].pop("files"), "field 'components.vae.files' must be an object, got null"),
    (_set(["components", "vae", "files"], {"../x": "0"}), "names '../x', not a file name"),
    (_set(["aux", "scheduler", "files"], {"a": 1}), "field 'aux.scheduler.files.a' must be a string, got 1"),
    (_set(["sampling_type"], "sideways"), "field 'sampling_type' must be null or one of"),
    (_set(["components", "vae", "dtype"], "float32"), "field 'components.vae.dtype' must be one of ['bf16', "),
    (_set(["components", "vae", "dtype"], None), "field 'components.vae.dtype' must be one of"),
    (_set(["components", "vae", "dtype"], "mixed"), "field 'components.vae.dtypes' must be an object, got null"),
    (_set(["components", "vae", "dtypes"], {"fp32": 2, "bf16": 1}), "field 'components.vae.dtype' must be one of"),
    (lambda m: m["components"]["vae"].update(dtype="mixed", dtypes={"fp32": 2, "bf16": 1.5}),
     "field 'components.vae.dtypes.bf16' must be an integer, got 1.5"),
    (lambda m: m["components"]["vae"].update(dtype="mixed", dtypes={"fp32": 2, "bf16": True}),
     "field 'components.vae.dtypes.bf16' must be an integer, got true"),
    (lambda m: m["components"]["vae"].update(dtype="mixed", dtypes={"fp32": 2, "int8": 1}),
     "field 'components.vae.dtypes' must count tensors (a positive integer) per dtype of"),
    (lambda m: m["components"]["vae"].update(dtype="mixed", dtypes={"fp32": 2, "bf16": 0}),
     "field 'components.vae.dtypes' must count tensors (a positive integer) per dtype of"),
    (lambda m: m["components"]["vae"].update(dtype="mixed", dtypes={"fp32": 2}),
     "field 'components.vae.dtypes' goes with 'components.vae.dtype' 'mixed' and counts two or more dtypes"),
    (lambda m: m["components"]["vae"].update(dtype="fp32", dtypes={"fp32": 2, "bf16": 1}),
     "field 'components.vae.dtypes' goes with 'components.vae.dtype' 'mixed'"),
])
def test_manifest_structure_is_checked_by_every_reader(tmp_path, edit, message):
    manifest = _manifest()
    edit(manifest)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    readers = [read_manifest, verify, lambda p: FramePackPipeline.from_pretrained(p, device="cpu"),
               lambda p: HunyuanVideoVAE.from_pretrained(p, device="cpu")]
    for reader in readers:
        with pytest.raises(CheckpointError) as info:
            reader(tmp_path)
        assert str(info.value).startswith(f"{tmp_path / MANIFEST}: ") and message in str(info.value)


@pytest.mark.parametrize("name, doc, message", [
    ("tokenizer_config.json", [], "tokenizer_config.json: expected a JSON object"),
    ("special_tokens_map.json", "{", "special_tokens_map.json: not valid JSON"),
    ("tokenizer_config.json", {"padding_side": 5}, "field 'padding_side' must be a string, got 5"),
    ("tokenizer_config.json", {"padding_side": "middle"}, "field 'padding_side' must be 'left' or 'right'"),
    ("tokenizer_config.json", {"pad_token": {"content": 5}}, "field 'pad_token.content' must be a string"),
    ("tokenizer_config.json", {"model_max_length": "77"}, "field 'model_max_length' must be a finite number"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"7": 5}}, "field 'added_tokens_decoder.7' must be an object"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"x": {}}}, "has a key 'x' that is not a token id"),
])
@pytest.mark.parametrize("tokenizer", [LlamaTokenizer, CLIPTokenizer])
def test_tokenizer_configs_are_checked(tmp_path, name, doc, message, tokenizer):
    (tmp_path / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(CheckpointError) as info:
        tokenizer.from_pretrained(tmp_path)
    assert str(info.value).startswith(str(tmp_path / name)) and message in str(info.value)


@pytest.mark.parametrize("files, message", [
    ({"vocab.json": {"a": "1", "b": 2}, "merges.txt": "a b\n"}, "it must map tokens to integer ids"),
    ({"vocab.json": {"a": 1, "b": 2}, "merges.txt": "a b c\n"}, "merge ('a', 'b', 'c'): not a pair of strings"),
    ({"tokenizer.json": {"model": {"vocab": {"a": 1}, "merges": [[1, 2]]}}}, "merge (1, 2): not a pair of strings"),
    ({"tokenizer.json": {"model": {"vocab": [1], "merges": []}}}, "it must map tokens to integer ids"),
])
def test_clip_vocabulary_is_checked(tmp_path, files, message):
    for name, doc in files.items():
        (tmp_path / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path}: malformed CLIP vocabulary")) as info:
        CLIPTokenizer.from_pretrained(tmp_path)
    assert message in str(info.value)


@pytest.mark.parametrize("text, message", [
    ('{"shift": "x"}', "field 'shift' must be a finite number, got \"x\""),
    ('{"shift": NaN}', "field 'shift' must be a finite number, got NaN"),
    ('{"use_dynamic_shifting": 1}', "field 'use_dynamic_shifting' must be true or false, got 1"),
    ('{"shift": -1.0}', "FlowMatchConfig: shift must be positive"),
    ("{", "not valid JSON"),
    ("[1]", "expected a JSON object"),
])
def test_scheduler_config_is_checked(tmp_path, text, message):
    path = tmp_path / "scheduler_config.json"
    path.write_text(text)
    with pytest.raises(CheckpointError) as info:
        FlowMatchConfig.from_file(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_scheduler_config_still_reads_diffusers_fields(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7, "base_shift": None,
                                "num_train_timesteps": 1000, "use_dynamic_shifting": False}))
    assert FlowMatchConfig.from_file(path) == FlowMatchConfig(shift=7)


def test_non_utf8_index_names_the_file(tmp_path, capsys):
    safetensors.torch.save_file({"w": torch.zeros(2)}, tmp_path / "model-00001-of-00001.safetensors")
    (tmp_path / "model.safetensors.index.json").write_bytes(b'{"weight_map": {"w": "\xff"}}')
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: not valid JSON"):
        open_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLHunyuanVideo"}))
    assert convert_main([str(tmp_path), str(tmp_path.parent / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors.index.json: not valid JSON" in err, err
    assert not (tmp_path.parent / "out").exists()


VAE_SRC = {"_class_name": "AutoencoderKLHunyuanVideo"}
TRANSFORMER_SRC = {"_class_name": "HunyuanVideoTransformer3DModelPacked", "has_image_proj": True,
                   "has_clean_x_embedder": True}
LLAMA_SRC = {"architectures": ["LlamaModel"], "vocab_size": 320, "hidden_size": 64, "intermediate_size": 96,
             "num_hidden_layers": 2, "num_attention_heads": 4}
CLIP_SRC = {"architectures": ["CLIPTextModel"]}
SIGLIP_SRC = {"architectures": ["SiglipVisionModel"]}


@pytest.mark.parametrize("config, message", [
    ({**VAE_SRC, "layers_per_block": 1.5}, "field 'layers_per_block' must be an integer, got 1.5"),
    ({**VAE_SRC, "block_out_channels": None}, "field 'block_out_channels' must be a list of integers, got null"),
    ({**VAE_SRC, "block_out_channels": 8}, "field 'block_out_channels' must be a list of integers, got 8"),
    ({**VAE_SRC, "up_block_types": "HunyuanVideoUpBlock3D"}, "field 'up_block_types' must be a list of strings"),
    ({**VAE_SRC, "act_fn": ["silu"]}, "field 'act_fn' must be a string"),
    ({**TRANSFORMER_SRC, "num_layers": 1.0}, "field 'num_layers' must be an integer, got 1.0"),
    ({**TRANSFORMER_SRC, "rope_axes_dim": 5}, "field 'rope_axes_dim' must be a list of integers, got 5"),
    ({**TRANSFORMER_SRC, "has_image_proj": "yes"}, "field 'has_image_proj' must be true or false, got \"yes\""),
    ({**TRANSFORMER_SRC, "num_attention_heads": "24"}, "field 'num_attention_heads' must be an integer"),
    ({**TRANSFORMER_SRC, "out_channels": 1.5}, "field 'out_channels' must be an integer"),
    ({**LLAMA_SRC, "hidden_size": "64"}, "field 'hidden_size' must be an integer, got \"64\""),
    ({k: v for k, v in LLAMA_SRC.items() if k != "vocab_size"}, "field 'vocab_size' is missing"),
    ({**LLAMA_SRC, "rope_scaling": []}, "field 'rope_scaling' must be an object, got []"),
    ({**LLAMA_SRC, "rope_scaling": {"rope_type": "llama3", "factor": "8"}}, "field 'factor' must be a finite number"),
    ({**LLAMA_SRC, "num_key_value_heads": 3}, "LlamaConfig: num_attention_heads 4 is not a multiple"),
    ({**LLAMA_SRC, "rope_theta": 10**400}, "field 'rope_theta' must be a finite number, got 1000"),
    ({**VAE_SRC, "block_out_channels": [], "down_block_types": [3]}, "field 'down_block_types' must be a list of str"),
    ({**VAE_SRC, "block_out_channels": []}, "HunyuanVideoVAEConfig: "),
    ({**CLIP_SRC, "hidden_act": 5}, "field 'hidden_act' must be a string, got 5"),
    ({**SIGLIP_SRC, "image_size": [384, "x"]}, "field 'image_size' must be a list of integers"),
    ({**SIGLIP_SRC, "patch_size": 14.5}, "field 'patch_size' must be an integer, got 14.5"),
    ({"architectures": "LlamaModel"}, "unknown architecture nothing"),
    ([1, 2], "expected a JSON object at the top level, got a list"),
])
def test_source_config_fields_are_checked(tmp_path, config, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises((ConversionError, CheckpointError)) as info:
        convert(src, tmp_path / "out" / "dst")
    assert str(info.value).startswith(f"{src / 'config.json'}: ") and message in str(info.value), str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_model_index_must_be_an_object(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model_index.json").write_text("[]")
    assert convert_main([str(tmp_path / "src"), str(tmp_path / "dst")]) == 2
    index = tmp_path / "src" / "model_index.json"
    assert capsys.readouterr().err == f"error: {index}: expected a JSON object at the top level, got a list\n"


# --- config ranges and layer counts, checked before any model is built (issue 22) ---------------------------------

def _config_classes():
    from framepack_native.models.clip import CLIPTextConfig
    from framepack_native.models.llama import LlamaConfig
    from framepack_native.models.siglip import SiglipVisionConfig
    from framepack_native.models.transformer import FramePackTransformerConfig
    return LlamaConfig, CLIPTextConfig, SiglipVisionConfig, HunyuanVideoVAEConfig, FramePackTransformerConfig


def test_every_real_config_is_in_range():
    for config_class in _config_classes():
        config_class()  # the defaults are the real checkpoints' configs


@pytest.mark.parametrize("config_class, fields, message", [
    ("LlamaConfig", {"hidden_size": -32}, "hidden_size must be >= 1 and <= 65536, got -32"),
    ("LlamaConfig", {"hidden_size": 2**40}, "hidden_size must be >= 1 and <= 65536, got 1099511627776"),
    ("LlamaConfig", {"num_hidden_layers": 300_000}, "num_hidden_layers must be >= 1 and <= 1024, got 300000"),
    ("LlamaConfig", {"vocab_size": 2**30}, "vocab_size must be >= 1 and <= 16777216"),
    ("LlamaConfig", {"num_key_value_heads": 0}, "num_key_value_heads must be >= 1"),
    ("LlamaConfig", {"rms_norm_eps": -1.0}, "rms_norm_eps must be > 0, got -1.0"),
    ("LlamaConfig", {"rms_norm_eps": 0.0}, "rms_norm_eps must be > 0, got 0.0"),
    ("LlamaConfig", {"rope_theta": 0.0}, "rope_theta must be > 0"),
    ("LlamaConfig", {"num_attention_heads": 4096, "num_key_value_heads": 8},
     "num_attention_heads x head_dim must be >= 1 and <= 65536, got 524288"),
    ("CLIPTextConfig", {"hidden_size": -32}, "hidden_size must be >= 1 and <= 65536, got -32"),
    ("CLIPTextConfig", {"hidden_size": 2**40}, "hidden_size must be >= 1 and <= 65536"),
    ("CLIPTextConfig", {"max_position_embeddings": 2**62}, "max_position_embeddings must be >= 1 and <= 16777216"),
    ("CLIPTextConfig", {"eos_token_id": 49408}, "eos_token_id must be >= 0 and <= 49407, got 49408"),
    ("CLIPTextConfig", {"layer_norm_eps": 0}, "layer_norm_eps must be > 0"),
    ("SiglipVisionConfig", {"hidden_size": -32}, "hidden_size must be >= 1 and <= 65536, got -32"),
    ("SiglipVisionConfig", {"num_hidden_layers": 0}, "num_hidden_layers must be >= 1"),
    ("SiglipVisionConfig", {"image_size": 60000, "patch_size": 1}, "(image_size // patch_size)^2 positions must be"),
    ("HunyuanVideoVAEConfig", {"norm_num_groups": -4}, "norm_num_groups must be >= 1 and <= 65536, got -4"),
    ("HunyuanVideoVAEConfig", {"layers_per_block": 300_000}, "layers_per_block must be >= 1 and <= 1024"),
    ("HunyuanVideoVAEConfig", {"block_out_channels": [128, -256, 512, 512]}, "block_out_channels must be >= 1"),
    ("HunyuanVideoVAEConfig", {"scaling_factor": 0.0}, "scaling_factor must be > 0"),
    ("FramePackTransformerConfig", {"num_attention_heads": 2**40}, "num_attention_heads must be >= 1 and <= 65536"),
    ("FramePackTransformerConfig", {"num_single_layers": 300_000}, "num_single_layers must be >= 0 and <= 1024"),
    ("FramePackTransformerConfig", {"num_attention_heads": 1024},
     "num_attention_heads x attention_head_dim must be >= 1 and <= 65536, got 131072"),
    ("FramePackTransformerConfig", {"mlp_ratio": 1e-6}, "the MLP width int(hidden_dim x mlp_ratio) must be >= 1"),
    ("FramePackTransformerConfig", {"mlp_ratio": 100.0}, "the MLP width int(hidden_dim x mlp_ratio) must be"),
])
def test_config_ranges_are_checked_naming_the_file_and_field(config_class, fields, message):
    config_class = {c.__name__: c for c in _config_classes()}[config_class]
    with pytest.raises(CheckpointError) as info:
        config_from_dict(config_class, fields, "c.json")
    assert str(info.value).startswith(f"c.json: {config_class.__name__}: ") and message in str(info.value)


def _native_folder(cls, config, path):
    with torch.device("meta"):
        model = cls(config)
    save_pretrained(model.to_empty(device="cpu"), path)
    return path


def _edit_config(path, **fields):
    doc = json.loads((path / "config.json").read_text())
    doc["config"].update(fields)
    (path / "config.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("cls, config, field, value, prefix, held", [
    (LlamaTextEncoder, "LlamaConfig", "num_hidden_layers", 1000, "layers", "2 (layers.0 .. layers.1): 998 missing"),
    (CLIPTextEncoder, "CLIPTextConfig", "num_hidden_layers", 3, "layers", "2 (layers.0 .. layers.1): 1 missing"),
    (SiglipVisionEncoder, "SiglipVisionConfig", "num_hidden_layers", 1, "layers",
     "2 (layers.0 .. layers.1): 1 unexpected"),
    (FramePackTransformer, "FramePackTransformerConfig", "num_single_layers", 900, "single_blocks",
     "2 (single_blocks.0 .. single_blocks.1): 898 missing"),
    (FramePackTransformer, "FramePackTransformerConfig", "num_layers", 0, "double_blocks",
     "2 (double_blocks.0 .. double_blocks.1): 2 unexpected"),
    (HunyuanVideoVAE, "HunyuanVideoVAEConfig", "layers_per_block", 1000, "encoder.down_blocks.0.resnets",
     "1 (encoder.down_blocks.0.resnets.0 .. encoder.down_blocks.0.resnets.0): 999 missing"),
])
def test_layer_counts_are_compared_with_the_checkpoint_before_the_model_is_built(tmp_path, monkeypatch, cls, config,
                                                                                  field, value, prefix, held):
    config_class = {c.__name__: c for c in _config_classes()}[config]
    path = _native_folder(cls, config_class.tiny(), tmp_path / "m")
    _edit_config(path, **{field: value})
    monkeypatch.setattr(cls, "__init__", lambda *a: pytest.fail("the model was built"))
    with pytest.raises(CheckpointError) as info:
        cls.from_pretrained(path, dtype=torch.float32, device="cpu")
    expected = (f"{path / 'config.json'}: field {field!r} asks for {value} {prefix}.N, but "
                f"{path / 'model.safetensors'} holds {held}")
    assert str(info.value) == expected


def test_a_source_config_claiming_more_layers_than_its_checkpoint_is_refused_before_building(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    state = {}
    for i in range(2):
        state.update({f"layers.{i}.self_attn.{x}_proj.weight": torch.zeros(w, 64) for x, w in
                      (("q", 64), ("k", 32), ("v", 32), ("o", 64))})
        state.update({f"layers.{i}.mlp.{x}_proj.weight": torch.zeros(96, 64) for x in ("gate", "up")})
        state[f"layers.{i}.mlp.down_proj.weight"] = torch.zeros(64, 96)
        state.update({f"layers.{i}.{n}.weight": torch.zeros(64) for n in ("input_layernorm",
                                                                        "post_attention_layernorm")})
    state.update({"embed_tokens.weight": torch.zeros(320, 64), "norm.weight": torch.zeros(64)})
    safetensors.torch.save_file(state, src / "model.safetensors")
    (src / "config.json").write_text(json.dumps({**LLAMA_SRC, "num_hidden_layers": 1000}))
    monkeypatch.setattr(LlamaTextEncoder, "__init__", lambda *a: pytest.fail("the model was built"))
    with pytest.raises(ConversionError) as info:
        convert(src, tmp_path / "dst")
    assert str(info.value) == (f"{src / 'config.json'}: field 'num_hidden_layers' asks for 1000 layers.N, but {src} "
                               "holds 2 (layers.0 .. layers.1): 998 missing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
