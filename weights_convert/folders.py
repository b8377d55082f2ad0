"""Converting a component folder or a whole pipeline into a native folder, atomically, and verifying it.

DST layout:
    manifest.json            format, format_version, components {name: class, path, files {name: sha256},
                             dtype ("bf16", ... or "mixed" with dtypes {"bf16": n, ...})}, aux {name: files},
                             sampling_type
    <component>/config.json + model*.safetensors   (path "." when SRC was a single component)
    tokenizer/, tokenizer_2/, scheduler/, feature_extractor/   (config and vocabulary files, copied)
"""
import contextlib
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch

from framepack_native.configs import config_from_dict
from framepack_native.files import CheckpointError, file_mode, read_json, write_text_atomic
from framepack_native.models.loading import FORMAT_VERSION, MANIFEST, dtype_entry, read_manifest
from framepack_native.sections import SAMPLING_TYPES
from framepack_native.weights import check_checkpoint, check_dtype, open_checkpoint, save_sharded
from weights_convert.core import (ConversionError, apply_step, build_plan, check_plan, find_converter, planned_shape,
                                  widest_dtype)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
AUX_FOLDERS = ("tokenizer", "tokenizer_2", "scheduler", "feature_extractor")
AUX_SUFFIXES = (".json", ".txt", ".model")
SHARD_BYTES = 5 * 1024**3


def sha256(path, chunk=16 * 1024 * 1024):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cast_dtype(dtype):
    """The floating dtype a conversion casts to: None (keep each tensor's source dtype), a DTYPES name or value."""
    if dtype is None or dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ConversionError(f"dtype must be None (keep the source dtypes), one of {sorted(DTYPES)} or "
                          f"torch.bfloat16 / float16 / float32, got {dtype!r}")


def convert_component(converter, src, dst, dtype=None, max_shard_bytes=SHARD_BYTES):
    """Stream one component from a reference folder into native folder `dst`. Returns its manifest entry.

    dtype None keeps every floating tensor's source dtype (a fused one takes the widest of its sources, so the
    conversion is lossless); a floating dtype casts them all. Integer tensors keep theirs.
    """
    dtype = cast_dtype(dtype)
    src, dst = Path(src), Path(dst)
    config_path = src / "config.json"
    cls = converter.load_class()
    try:
        native_fields = converter.config(read_json(config_path))
    except ConversionError as e:
        raise ConversionError(f"{config_path}: {e}") from None
    config = config_from_dict(cls.config_class, native_fields, config_path)
    with torch.device("meta"):
        model = cls(config)
    model_state = model.state_dict(keep_vars=True)
    expected = {k: tuple(v.shape) for k, v in model_state.items()}
    model_dtypes = {k: v.dtype for k, v in model_state.items()}
    ckpt = open_checkpoint(src)
    steps = build_plan(converter.rules(native_fields), {k: ckpt.shape(k) for k in ckpt.keys()})
    check_plan(steps, expected, src)
    for step in steps:
        for name in step.srcs:
            check_dtype(ckpt.dtype(name), model_dtypes[step.dst], ckpt.file(name), name)
    by_dst = {s.dst: s for s in steps}

    def out_dtype(name):
        if not model_dtypes[name].is_floating_point:
            return model_dtypes[name]
        return dtype or widest_dtype([ckpt.dtype(n) for n in by_dst[name].srcs])

    specs = [(name, planned_shape(by_dst[name]), out_dtype(name)) for name in expected]

    def fetch(name):
        step = by_dst[name]
        if step.op in ("cat0", "cat1"):  # fused: each source copied straight into its slice, no temporaries
            dim = int(step.op[-1])
            out = torch.empty(planned_shape(step), dtype=out_dtype(name))
            for part, src in zip(out.split([s[dim] for s in step.src_shapes], dim=dim), step.srcs):
                ckpt.read_into(src, part)
            return out
        tensors = [ckpt.get(n, dtype=out_dtype(name)) for n in step.srcs]
        return apply_step(step, tensors).contiguous()

    dst.mkdir(parents=True, exist_ok=True)
    files = save_sharded(dst, specs, fetch, max_shard_bytes=max_shard_bytes)
    doc = {"class": cls.__name__, "format_version": FORMAT_VERSION, "config": native_fields}
    write_text_atomic(dst / "config.json", json.dumps(doc, indent=2))
    return {"class": cls.__name__, "files": {f: sha256(dst / f) for f in files + ["config.json"]},
            **dtype_entry(d for _, _, d in specs)}


def copy_aux(src, dst):
    """Copy the configuration / vocabulary files of a tokenizer, scheduler or processor folder."""
    dst.mkdir(parents=True, exist_ok=True)
    files = {}
    for f in sorted(Path(src).iterdir()):
        if f.is_file() and f.suffix in AUX_SUFFIXES:
            shutil.copyfile(f, dst / f.name)
            files[f.name] = sha256(dst / f.name)
    return files


def _component_sources(src, transformer, image_encoder):
    """[(folder, config)] of the model components to convert, and [(name, folder)] of aux folders."""
    src = Path(src)
    models, aux = [], []
    if (src / "model_index.json").is_file():
        index = read_json(src / "model_index.json")
        for name, entry in sorted(index.items()):
            if name.startswith("_") or not entry or not (src / name).is_dir():
                continue
            if name in AUX_FOLDERS:
                aux.append((name, src / name))
            elif not (transformer and name == "transformer") and not (image_encoder and name == "image_encoder"):
                models.append(src / name)
    elif (src / "config.json").is_file():
        models.append(src)
    else:
        raise ConversionError(f"{src}: neither a diffusers pipeline (model_index.json) nor a component (config.json)")
    if transformer:
        models.append(Path(transformer))
    if image_encoder:
        image_encoder = Path(image_encoder)
        if (image_encoder / "image_encoder").is_dir():
            if (image_encoder / "feature_extractor").is_dir():
                aux.append(("feature_extractor", image_encoder / "feature_extractor"))
            image_encoder = image_encoder / "image_encoder"
        models.append(image_encoder)
    return models, aux


def _check_dst(dst, overwrite):
    """Refuse a DST that is a file, or a non-empty folder without overwrite. Creates nothing."""
    if dst.exists():
        if not dst.is_dir():
            raise ConversionError(f"{dst}: exists and is not a folder")
        if any(dst.iterdir()) and not overwrite:
            raise ConversionError(f"{dst}: folder exists and is not empty (pass --overwrite to replace it)")


def guess_sampling_type(transformer_dir):
    """The sampling a FramePack transformer was trained for. The two public checkpoints share one config, so
    the download's name decides: FramePack_F1_* is vanilla (forward), FramePackI2V_HY inverted anti-drifting."""
    parts = Path(transformer_dir).resolve().parts
    return "vanilla" if any("FramePack_F1" in p or "F1_I2V" in p for p in parts) else "inverted_anti_drifting"


def convert(src, dst, dtype=None, *, transformer=None, image_encoder=None, overwrite=False,
            sampling_type=None, max_shard_bytes=SHARD_BYTES):
    """Convert SRC (a pipeline root or one component folder) into native folder DST, atomically.

    dtype: None keeps every tensor's source dtype (lossless; a fused tensor takes the widest of its sources);
    torch.bfloat16 / float16 / float32 or "bf16" / "fp16" / "fp32" casts the floating tensors.
    sampling_type: recorded in the manifest as the pipeline's default; None guesses it from the transformer
    folder's name (see guess_sampling_type).
    """
    if sampling_type is not None and sampling_type not in SAMPLING_TYPES:
        raise ConversionError(f"unknown sampling type {sampling_type!r}; expected one of {SAMPLING_TYPES}")
    dtype = cast_dtype(dtype)
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConversionError(f"{src}: no such folder")
    for source in (src, transformer, image_encoder):
        if source is not None and dst.resolve() in (Path(source).resolve(), *Path(source).resolve().parents):
            raise ConversionError(f"{dst}: would overwrite its own source {source}")
    stale = dst.with_name(f".{dst.name}.old")  # where --overwrite keeps the old DST until the new one is in place
    if stale.is_dir() and not dst.exists():  # an --overwrite stopped between its two renames: restore the old DST
        stale.rename(dst)
    _check_dst(dst, overwrite)
    models, aux = _component_sources(src, transformer, image_encoder)
    single = not (src / "model_index.json").is_file() and not transformer and not image_encoder
    created = [p for p in reversed(dst.parents) if not p.exists()]  # outermost first; removed again on failure
    tmp, replaced = None, False
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".partial"))
        tmp.chmod(file_mode(folder=True))
        manifest = {"format": "framepack_native", "format_version": FORMAT_VERSION, "components": {}, "aux": {},
                    "sampling_type": None}
        for folder in models:
            config = read_json(folder / "config.json")
            conv = find_converter(config, folder / "config.json")
            name = conv.component
            if name in manifest["components"]:
                raise ConversionError(f"{folder}: a second {name} component")
            path = "." if single else name
            entry = convert_component(conv, folder, tmp / path, dtype, max_shard_bytes)
            manifest["components"][name] = {"path": path, **entry}
            if name == "transformer":
                manifest["sampling_type"] = sampling_type or guess_sampling_type(folder)
        for name, folder in aux:
            manifest["aux"][name] = {"path": name, "files": copy_aux(folder, tmp / name)}
        write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2))
        verify(tmp)
        if dst.exists():
            if stale.exists():  # left by an --overwrite whose clean-up was cut short (DST itself is whole)
                shutil.rmtree(stale)
            replaced = True
            dst.rename(stale)
        tmp.rename(dst)
    except BaseException:
        if replaced and stale.exists() and not dst.exists():  # stopped between the two renames: put it back
            stale.rename(dst)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    shutil.rmtree(stale, ignore_errors=True)  # the new DST is in place: a failure here changes nothing
    return dst


def verify(folder):
    """Re-check a native folder: every file's SHA-256, every component's tensors against its model."""
    from framepack_native.models.loading import read_config
    from weights_convert.registry import converters

    folder = Path(folder)
    manifest = read_manifest(folder)
    classes = {c.native_class.split(":")[1]: c for c in converters()}
    for section in ("components", "aux"):
        for name, entry in manifest[section].items():
            for fname, digest in entry["files"].items():
                path = folder / entry["path"] / fname
                if not path.is_file():
                    raise CheckpointError(f"{path}: missing ({section[:-1]} {name})")
                if sha256(path) != digest:
                    raise CheckpointError(f"{path}: checksum differs from {MANIFEST}: damaged or modified")
    for name, entry in manifest["components"].items():
        if entry["class"] not in classes:
            raise CheckpointError(f"{folder / MANIFEST}: component {name} has unknown class {entry['class']}")
        cls = classes[entry["class"]].load_class()
        config = read_config(cls, folder / entry["path"])
        with torch.device("meta"):
            model = cls(config)
        check_checkpoint(model, open_checkpoint(folder / entry["path"]))
    return manifest
