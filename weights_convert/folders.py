"""Converting a component folder or a whole pipeline into a native folder, atomically, and verifying it.

DST layout:
    manifest.json            format, format_version, components {name: class, path, files {name: sha256},
                             dtype ("bf16", ... or "mixed" with dtypes {"bf16": n, ...})}, aux {name: files},
                             sampling_type, sampling_type_source (where the sampling type came from)
    <component>/config.json + model*.safetensors   (path "." when SRC was a single component)
    tokenizer/, tokenizer_2/, scheduler/, feature_extractor/   (config and vocabulary files, copied)

Written through a work folder beside DST, put in place only when complete: weights_convert.workdirs.
"""
import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

from framepack_native.configs import config_from_dict
from framepack_native.files import CheckpointError, read_json, sha256, write_text_atomic
from framepack_native.models.loading import FORMAT_VERSION, MANIFEST, dtype_entry, read_manifest
from framepack_native.sections import SAMPLING_TYPES
from framepack_native.weights import check_checkpoint, check_dtype, check_layer_counts, open_checkpoint, save_sharded
from weights_convert.core import (ConversionError, apply_step, build_plan, check_plan, find_converter, planned_shape,
                                  widest_dtype)
from weights_convert.workdirs import (LeftoverWork, check_dst, follow, make_work, put_in_place,  # noqa: F401
                                      remove_work, tidy_leftovers)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": torch.float8_e4m3fn}
AUX_FOLDERS = ("tokenizer", "tokenizer_2", "scheduler", "feature_extractor")
AUX_SUFFIXES = (".json", ".txt", ".model")
SHARD_BYTES = 5 * 1024**3
def cast_dtype(dtype):
    """The floating dtype a conversion casts to: None (keep each tensor's source dtype), a DTYPES name or value."""
    if dtype is None or dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ConversionError(f"dtype must be None (keep the source dtypes), one of {sorted(DTYPES)} or "
                          f"torch.bfloat16 / float16 / float32 / float8_e4m3fn, got {dtype!r}")


def convert_component(converter, src, dst, dtype=None, max_shard_bytes=SHARD_BYTES):
    """Stream one component from a reference folder into native folder `dst`. Returns its manifest entry.

    dtype None keeps every floating tensor's source dtype (a fused one takes the widest of its sources, so the
    conversion is lossless); a floating dtype casts them all. fp8 (torch.float8_e4m3fn): the Linear weights of the
    transformer blocks quantised from their float32 values (framepack_native.fp8: each followed by its
    .scale_weight), every other floating tensor bf16. Integer tensors keep theirs.
    """
    from framepack_native.fp8 import BLOCK_LISTS, FP8, SCALE_SUFFIX, block_linears, quantize_fp8, scale_blocks
    dtype = cast_dtype(dtype)
    src, dst = Path(src), Path(dst)
    config_path = src / "config.json"
    cls = converter.load_class()
    try:
        native_fields = converter.config(read_json(config_path))
    except ConversionError as e:
        raise ConversionError(f"{config_path}: {e}") from None
    config = config_from_dict(cls.config_class, native_fields, config_path)
    ckpt = open_checkpoint(src)
    steps = build_plan(converter.rules(native_fields), {k: ckpt.shape(k) for k in ckpt.keys()})
    counts = config.layer_counts() if hasattr(config, "layer_counts") else {}  # every native config has them
    check_layer_counts(counts, [s.dst for s in steps], config_path, src, ConversionError)
    with torch.device("meta"):
        model = cls(config)
    model_state = model.state_dict(keep_vars=True)
    expected = {k: tuple(v.shape) for k, v in model_state.items()}
    model_dtypes = {k: v.dtype for k, v in model_state.items()}
    check_plan(steps, expected, src, ckpt.file)
    for step in steps:
        for name in step.srcs:
            check_dtype(ckpt.dtype(name), model_dtypes[step.dst], ckpt.file(name), name)
    by_dst = {s.dst: s for s in steps}
    # only the transformer's blocks (the Llama encoder is quantised at load, if at all: --fp8-llm)
    quantised = {f"{n}.weight" for n, _ in block_linears(model, BLOCK_LISTS)} if dtype == FP8 else set()
    scales = {}  # a quantised weight's module -> its scale, made with it and written right after it

    def out_dtype(name):
        if not model_dtypes[name].is_floating_point:
            return model_dtypes[name]
        if dtype == FP8:
            return FP8 if name in quantised else torch.bfloat16
        return dtype or widest_dtype([ckpt.dtype(n) for n in by_dst[name].srcs])

    specs, later = [], {}  # a scale goes after its module's bias: the order an fp8 model loads in (one-pass hash)
    for name in expected:
        specs.append((name, planned_shape(by_dst[name]), out_dtype(name)))
        module = name.rpartition(".")[0]
        if name in quantised:
            out_f, in_f = specs[-1][1]
            later[module] = (module + SCALE_SUFFIX, (out_f, scale_blocks(in_f)), torch.bfloat16)
            if module + ".bias" not in expected:
                specs.append(later.pop(module))
        elif name == module + ".bias" and module in later:
            specs.append(later.pop(module))

    def read(name, as_dtype):
        step = by_dst[name]
        if step.op in ("cat0", "cat1"):  # fused: each source copied straight into its slice, no temporaries
            dim = int(step.op[-1])
            out = torch.empty(planned_shape(step), dtype=as_dtype)
            for part, src in zip(out.split([s[dim] for s in step.src_shapes], dim=dim), step.srcs):
                ckpt.read_into(src, part)
            return out
        tensors = [ckpt.get(n, dtype=as_dtype) for n in step.srcs]
        return apply_step(step, tensors).contiguous()

    def fetch(name):
        if name.endswith(SCALE_SUFFIX):
            return scales.pop(name[:-len(SCALE_SUFFIX)])
        if name not in quantised:
            return read(name, out_dtype(name))
        try:
            q, scales[name[:-len(".weight")]] = quantize_fp8(read(name, torch.float32))
        except ValueError as e:
            raise ConversionError(f"{src}: tensor {name!r}: {e}") from None
        return q

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


def guess_sampling_type(transformer_dir):
    """(sampling type, where it came from) of a FramePack transformer folder. The two public checkpoints share one
    config, so the name of the folder holding config.json decides, never a parent's: FramePack_F1_* (or *F1_I2V*) is
    vanilla (forward), anything else inverted anti-drifting. A Hugging Face cache snapshot
    (models--OWNER--NAME/snapshots/<40 hex>/) is named by its models--OWNER--NAME folder."""
    folder = Path(os.path.abspath(transformer_dir))  # "." and "x/.." name the folder they lead to
    name, said = folder.name, "folder name"
    repo = folder.parent.parent.name
    if (re.fullmatch(r"[0-9a-f]{40}", folder.name) and folder.parent.name == "snapshots"
            and re.fullmatch(r"models--[\w.-]+--[\w.-]+", repo)):
        name, said = repo, "Hugging Face cache folder"
    said = f"{said} {name!r}"
    if "framepack_f1" in name.lower() or "f1_i2v" in name.lower():
        return "vanilla", said
    return "inverted_anti_drifting", f"default ({said} does not say F1)"


def convert(src, dst, dtype=None, *, transformer=None, image_encoder=None, overwrite=False, sampling_type=None,
            clean_partial=False, max_shard_bytes=SHARD_BYTES):
    """Convert SRC (a pipeline root or one component folder) into native folder DST, atomically.

    dtype: None keeps every tensor's source dtype (lossless; a fused tensor takes the widest of its sources);
    torch.bfloat16 / float16 / float32 or "bf16" / "fp16" / "fp32" casts the floating tensors; "fp8" (or
    torch.float8_e4m3fn) quantises the transformer blocks' Linear weights and casts the rest to bf16.
    overwrite: replace a DST that holds a previous conversion (any other non-empty folder is refused).
    sampling_type: recorded in the manifest as the pipeline's default; None guesses it from the transformer
    folder's own name (see guess_sampling_type). The manifest's sampling_type_source says which.
    clean_partial: remove the work folders a killed conversion to DST left (else a LeftoverWork warning names them).
    A symbolic-link DST is followed: the conversion lands in its target and the link stays.
    """
    if sampling_type is not None and sampling_type not in SAMPLING_TYPES:
        raise ConversionError(f"unknown sampling type {sampling_type!r}; expected one of {SAMPLING_TYPES}")
    dtype = cast_dtype(dtype)
    src, given = Path(src), Path(dst)
    if not src.is_dir():
        raise ConversionError(f"{src}: no such folder")
    dst = follow(given)
    for source in (src, transformer, image_encoder):
        if source is not None and dst.resolve() in (Path(source).resolve(), *Path(source).resolve().parents):
            raise ConversionError(f"{given}: would overwrite its own source {source}")
    tidy_leftovers(dst, clean_partial)
    check_dst(dst, overwrite)
    models, aux = _component_sources(src, transformer, image_encoder)
    single = not (src / "model_index.json").is_file() and not transformer and not image_encoder
    created = [p for p in reversed(dst.parents) if not p.exists()]  # outermost first; removed again on failure
    work = lock = None
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        work, lock = make_work(dst, "partial")
        new = work / dst.name  # the work folder itself is never renamed into place: its marker stays with it
        new.mkdir()
        manifest = {"format": "framepack_native", "format_version": FORMAT_VERSION, "components": {}, "aux": {},
                    "sampling_type": None, "sampling_type_source": None}
        for folder in models:
            config = read_json(folder / "config.json")
            conv = find_converter(config, folder / "config.json")
            name = conv.component
            if name in manifest["components"]:
                raise ConversionError(f"{folder}: a second {name} component")
            path = "." if single else name
            entry = convert_component(conv, folder, new / path, dtype, max_shard_bytes)
            manifest["components"][name] = {"path": path, **entry}
            if name == "transformer":
                manifest["sampling_type"], manifest["sampling_type_source"] = (
                    (sampling_type, "--sampling-type") if sampling_type else guess_sampling_type(folder))
        for name, folder in aux:
            manifest["aux"][name] = {"path": name, "files": copy_aux(folder, new / name)}
        write_text_atomic(new / MANIFEST, json.dumps(manifest, indent=2))
        verify(new)
        put_in_place(new, dst, overwrite)
    except BaseException:
        if work is not None:
            remove_work(work, dst.name)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        if lock is not None:
            os.close(lock)
    remove_work(work, dst.name)  # holds only the marker now
    return given


def verify(folder):
    """Re-check a native folder: every file's SHA-256, every component's tensors against its model."""
    from framepack_native import fp8_loading
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
        checkpoint = open_checkpoint(folder / entry["path"])
        fp8_loading.prepare(model, checkpoint)  # the fp8 layers it stores, with their scales checked
        check_checkpoint(model, checkpoint)
        fp8_loading.check_stored(checkpoint)
    return manifest
