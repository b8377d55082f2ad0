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

from framepack_native.configs import check_field, config_from_dict, read_json  # noqa: F401 (re-exported)
from framepack_native.sections import SAMPLING_TYPES
from framepack_native.weights import CheckpointError, load_state, save_safetensors, write_text_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def read_manifest(root):
    """manifest.json of a converted folder with its structure checked: CheckpointError naming the file and field."""
    path = Path(root) / MANIFEST
    doc = read_json(path)
    if doc.get("format") != "framepack_native" or doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a framepack_native manifest of version {FORMAT_VERSION} (format "
                              f"{doc.get('format')!r}, format_version {doc.get('format_version')!r})")
    for section in ("components", "aux"):
        check_field(path, section, doc.get(section), dict)
        for name, entry in doc[section].items():
            field = f"{section}.{name}"
            check_field(path, field, entry, dict)
            for key in ("class", "path") if section == "components" else ("path",):
                check_field(path, f"{field}.{key}", entry.get(key), str)
            folder = Path(entry["path"])
            if folder.is_absolute() or ".." in folder.parts:
                raise CheckpointError(f"{path}: field '{field}.path' must be a path inside {root}, got "
                                      f"{entry['path']!r}")
            check_field(path, f"{field}.files", entry.get("files"), dict)
            for fname, digest in entry["files"].items():
                check_field(path, f"{field}.files.{fname}", digest, str)
                if Path(fname).name != fname:
                    raise CheckpointError(f"{path}: field '{field}.files' names {fname!r}, not a file name")
    if doc.get("sampling_type") not in (None, *SAMPLING_TYPES):
        raise CheckpointError(f"{path}: field 'sampling_type' must be null or one of {SAMPLING_TYPES}, got "
                              f"{doc['sampling_type']!r}")
    return doc


def component_dir(path, class_name):
    """The folder of component `class_name` under `path`: path itself, or the one manifest.json names."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model folder")
    if (path / "config.json").is_file():
        return path
    if (path / MANIFEST).is_file():
        for entry in read_manifest(path)["components"].values():
            if entry["class"] == class_name:
                return path / entry["path"]
        raise CheckpointError(f"{path / MANIFEST}: has no {class_name} component")
    raise CheckpointError(f"{path}: neither a native model folder (config.json) nor a converted pipeline "
                          f"({MANIFEST}); convert checkpoints with `python -m weights_convert SRC DST`")


def read_config(cls, folder):
    """The config dataclass stored in a native component folder's config.json."""
    path = Path(folder) / "config.json"
    doc = read_json(path)
    if "config" not in doc:
        raise CheckpointError(f"{path}: not a framepack_native config (convert the checkpoint "
                              "with `python -m weights_convert`)")
    if doc.get("class") != cls.__name__:
        raise CheckpointError(f"{path}: holds a {doc.get('class')}, not a {cls.__name__}")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {doc.get('format_version')}, "
                              f"this code reads version {FORMAT_VERSION}")
    check_field(path, "config", doc["config"], dict)
    return config_from_dict(cls.config_class, doc["config"], path)


def load_pretrained(cls, path, dtype=torch.bfloat16, device="cuda"):
    """Build `cls` on the meta device from a native folder and load its weights (strict, assign). Eval mode."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
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
