"""Native model folders: config.json + safetensors weights, loaded strictly onto a meta-built model.

A native component folder holds
    config.json   {"class": "FramePackTransformer", "format_version": 1, "config": {dataclass fields}}
    model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json
A converted pipeline root holds one such folder per component and a manifest.json naming them.
"""
import dataclasses
import json
import os
from pathlib import Path

import torch

from framepack_native.configs import check_field, config_from_dict, read_json  # noqa: F401 (re-exported)
from framepack_native.files import CheckpointError, sha256, write_text_atomic
from framepack_native.sections import SAMPLING_TYPES
from framepack_native.weights import checksum_error, check_layer_counts, load_state, open_checkpoint, save_safetensors

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DTYPE_LABELS = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                torch.float8_e4m3fn: "fp8"}
MIXED = "mixed"


def dtype_entry(dtypes):
    """The manifest fields recording a component's floating dtypes ([torch.dtype], one per tensor): {"dtype": "bf16"},
    or {"dtype": "mixed", "dtypes": {"bf16": n, "fp32": m}} when they differ; {} when none is floating."""
    counts = {}
    for dtype in dtypes:
        if dtype.is_floating_point:
            counts[DTYPE_LABELS[dtype]] = counts.get(DTYPE_LABELS[dtype], 0) + 1
    if len(counts) > 1:
        return {"dtype": MIXED, "dtypes": dict(sorted(counts.items()))}
    return {"dtype": next(iter(counts))} if counts else {}


def _check_dtype_entry(path, field, entry):
    """A component's "dtype" field and, with "mixed", its "dtypes" counts (both absent in older manifests)."""
    if "dtype" not in entry and "dtypes" not in entry:
        return
    names = sorted(DTYPE_LABELS.values())
    dtype = entry.get("dtype")
    if dtype not in (*names, MIXED):
        raise CheckpointError(f"{path}: field '{field}.dtype' must be one of {names} or {MIXED!r}, got {dtype!r}")
    if dtype != MIXED and "dtypes" not in entry:
        return
    counts = entry.get("dtypes")
    check_field(path, f"{field}.dtypes", counts, dict)
    for name, n in counts.items():
        check_field(path, f"{field}.dtypes.{name}", n, int)
        if name not in names or n < 1:
            raise CheckpointError(f"{path}: field '{field}.dtypes' must count tensors (a positive integer) per "
                                  f"dtype of {names}, got {name!r}: {n}")
    if dtype != MIXED or len(counts) < 2:
        raise CheckpointError(f"{path}: field '{field}.dtypes' goes with '{field}.dtype' {MIXED!r} and counts two "
                              f"or more dtypes, got dtype {dtype!r} and {counts}")


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
            if section == "components":
                _check_dtype_entry(path, field, entry)
    if doc.get("sampling_type") not in (None, *SAMPLING_TYPES):
        raise CheckpointError(f"{path}: field 'sampling_type' must be null or one of {SAMPLING_TYPES}, got "
                              f"{doc['sampling_type']!r}")
    source = doc.get("sampling_type_source")  # absent in older manifests, null when nothing recorded it
    if source is not None:
        check_field(path, "sampling_type_source", source, str)
        if not source.strip():
            raise CheckpointError(f"{path}: field 'sampling_type_source' must name where 'sampling_type' came from, "
                                  f"got {source!r}")
        if doc.get("sampling_type") is None:
            raise CheckpointError(f"{path}: field 'sampling_type_source' goes with a 'sampling_type', got "
                                  f"{source!r} with no sampling type")
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


def check_manifest_files(folder):
    """Check the files the manifest.json of a converted root lists for `folder` (the root itself, path ".", or a
    folder one level under it) against their SHA-256: each must exist, and every one but the weights is hashed now.

    Returns (manifest path, {weights file: SHA-256}) for the weights reader to check as it reads them, or
    (None, None) when no framepack_native manifest names the folder: a lone component folder has nothing to be
    checked against. The environment variable FRAMEPACK_NATIVE_VERIFY=0 turns the check off (the hash costs about
    a second per 1.3 GB of weights on one core: benchmarks/RESULTS.md).
    """
    folder = Path(folder)
    if os.environ.get("FRAMEPACK_NATIVE_VERIFY", "1") == "0":
        return None, None
    for root in (folder, folder.parent):
        path = root / MANIFEST
        if not path.is_file() or read_json(path).get("format") != "framepack_native":
            continue  # no manifest here, or someone else's manifest.json
        manifest = read_manifest(root)
        for section in ("components", "aux"):
            for entry in manifest[section].values():
                if (root / entry["path"]).resolve() != folder.resolve():
                    continue
                files = {folder / name: digest for name, digest in entry["files"].items()}
                for file, digest in files.items():
                    if not file.is_file():
                        raise CheckpointError(f"{file}: missing (listed in {path})")
                    if file.suffix != ".safetensors" and sha256(file) != digest:
                        raise checksum_error(file, path)
                return path, {f: d for f, d in files.items() if f.suffix == ".safetensors"}
    return None, None


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


def load_pretrained(cls, path, dtype=torch.bfloat16, device="cuda", quantize=None, loras=(), fp32_modules=()):
    """Build `cls` on the meta device from a native folder and load its weights (strict, assign). Eval mode.

    In a converted folder every file is checked against manifest.json's SHA-256 (the weights as they are read, at
    no extra pass), and a difference is refused naming the file; a component folder without a manifest (written
    by save_pretrained, or copied out of its root) is loaded unchecked, as is any with FRAMEPACK_NATIVE_VERIFY=0 in
    the environment. The config's layer counts are compared with the checkpoint's before the model is built.
    fp8 (framepack_native.fp8_loading): a checkpoint holding fp8 layers loads them as stored; quantize="fp8"
    quantises a float one's block Linear layers as they are read. loras: LoRA files (paths or (path, strength))
    merged into the weights: before quantising with fp8, else after the load (undoable with unload_lora).
    fp32_modules: modules whose floating tensors load in float32 whatever dtype says (before any LoRA merges).
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    from framepack_native import fp8_loading
    loras = fp8_loading.lora_list(loras)
    if quantize not in fp8_loading.QUANTIZE:
        raise ValueError(f"quantize must be one of {fp8_loading.QUANTIZE}, got {quantize!r}")
    if loras and not hasattr(cls, "load_lora"):
        raise ValueError(f"LoRAs apply to the FramePack transformer, not to a {cls.__name__}")
    folder = component_dir(path, cls.__name__)
    config = read_config(cls, folder)
    manifest, checksums = check_manifest_files(folder)  # after the parse: a malformed file keeps its own message
    checkpoint = open_checkpoint(folder, checksums=checksums, manifest=manifest)
    unlisted = [f for f in checkpoint.files if checksums is not None and f not in checksums]
    if unlisted:
        raise CheckpointError(f"{unlisted[0]}: not listed in {manifest} (a file added after conversion?)")
    counts = config.layer_counts() if hasattr(config, "layer_counts") else {}  # every native config has them
    check_layer_counts(counts, checkpoint.keys(), folder / "config.json", checkpoint.where)
    with torch.device("meta"):
        model = cls(config)
    source, keep = fp8_loading.prepare(model, checkpoint, quantize, loras)
    fp32 = {name: torch.float32 for name in model.state_dict(keep_vars=True)
            if any(name.startswith(m + ".") for m in fp32_modules)}
    load_state(model, source, dtype=dtype, device=device, dtypes={**fp32, **keep})
    fp8_loading.check_loaded(model, source)
    if loras and not keep:
        for lora_path, strength in loras:
            model.load_lora(lora_path, strength)
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
