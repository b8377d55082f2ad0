"""Native model folders: config.json + safetensors weights, loaded strictly onto a meta-built model.

A native component folder holds
    config.json   {"class": "FramePackTransformer", "format_version": 1, "config": {dataclass fields}}
    model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json
A converted pipeline root holds one such folder per component and a manifest.json naming them.
"""
import dataclasses
import json
from pathlib import Path

import torch

from framepack_native.weights import CheckpointError, load_state, save_safetensors, write_text_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def config_from_dict(config_class, fields):
    """Build a config dataclass from JSON fields (lists become tuples); unknown fields are an error."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(f"{config_class.__name__}: unknown config fields {unknown}")
    return config_class(**{k: _tuples(v) for k, v in fields.items()})


def read_json(path):
    """Read a JSON file; a missing or damaged one is a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def component_dir(path, class_name):
    """The folder of component `class_name` under `path`: path itself, or the one manifest.json names."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model folder")
    if (path / "config.json").is_file():
        return path
    if (path / MANIFEST).is_file():
        manifest = read_json(path / MANIFEST)
        for name, entry in manifest.get("components", {}).items():
            if entry.get("class") == class_name:
                return path / entry.get("path", name)
        raise CheckpointError(f"{path / MANIFEST}: has no {class_name} component")
    raise CheckpointError(f"{path}: neither a native model folder (config.json) nor a converted pipeline "
                          f"({MANIFEST}); convert checkpoints with `python -m weights_convert SRC DST`")


def read_config(cls, folder):
    """The config dataclass stored in a native component folder's config.json."""
    folder = Path(folder)
    doc = read_json(folder / "config.json")
    if not isinstance(doc, dict) or "config" not in doc:
        raise CheckpointError(f"{folder / 'config.json'}: not a framepack_native config (convert the checkpoint "
                              "with `python -m weights_convert`)")
    if doc.get("class") != cls.__name__:
        raise CheckpointError(f"{folder / 'config.json'}: holds a {doc.get('class')}, not a {cls.__name__}")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder / 'config.json'}: format version {doc.get('format_version')}, "
                              f"this code reads version {FORMAT_VERSION}")
    try:
        return config_from_dict(cls.config_class, doc["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None


def load_pretrained(cls, path, dtype=torch.bfloat16, device="cuda"):
    """Build `cls` on the meta device from a native folder and load its weights (strict, assign). Eval mode."""
    folder = component_dir(path, cls.__name__)
    config = read_config(cls, folder)
    with torch.device("meta"):
        model = cls(config)
    load_state(model, folder, dtype=dtype, device=device)
    return model.eval()


def config_json(model):
    """The config.json document of a native model."""
    return {"class": type(model).__name__, "format_version": FORMAT_VERSION,
            "config": dataclasses.asdict(model.config)}


def save_pretrained(model, path):
    """Write a native component folder: config.json + model.safetensors."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    save_safetensors(path / "model.safetensors", state)
    write_text_atomic(path / "config.json", json.dumps(config_json(model), indent=2))
