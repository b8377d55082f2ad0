"""Converting a component folder or a whole pipeline into a native folder, atomically, and verifying it.

DST layout:
    manifest.json            format, format_version, components {name: class, path, files {name: sha256},
                             dtype ("bf16", ... or "mixed" with dtypes {"bf16": n, ...})}, aux {name: files},
                             sampling_type, sampling_type_source (where the sampling type came from)
    <component>/config.json + model*.safetensors   (path "." when SRC was a single component)
    tokenizer/, tokenizer_2/, scheduler/, feature_extractor/   (config and vocabulary files, copied)

Work folders beside DST, each a marker (WORK_MARK, locked while its run lives) + the payload folder NAME:
    .NAME.XXXXXXXX.partial/NAME   the conversion being written; renamed to DST when complete and verified
    .NAME.XXXXXXXX.old/NAME       with --overwrite, the previous conversion until the new one is in place
"""
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from framepack_native.configs import config_from_dict
from framepack_native.files import CheckpointError, read_json, write_text_atomic
from framepack_native.models.loading import FORMAT_VERSION, MANIFEST, dtype_entry, read_manifest
from framepack_native.sections import SAMPLING_TYPES
from framepack_native.weights import check_checkpoint, check_dtype, check_layer_counts, open_checkpoint, save_sharded
from weights_convert.core import (ConversionError, apply_step, build_plan, check_plan, find_converter, planned_shape,
                                  widest_dtype)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
AUX_FOLDERS = ("tokenizer", "tokenizer_2", "scheduler", "feature_extractor")
AUX_SUFFIXES = (".json", ".txt", ".model")
SHARD_BYTES = 5 * 1024**3
WORK_KINDS = ("partial", "old")
WORK_MARK = ".framepack_native_work.json"  # in each work folder: what makes a .DST.*.partial / .old folder ours
WORK_FORMAT = "framepack_native work folder"


class LeftoverWork(UserWarning):
    """Work folders beside DST from a conversion that was killed (SIGKILL, the OOM killer, a power cut)."""


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


def _is_conversion(folder):
    """Whether `folder` holds a framepack_native conversion: a manifest.json of ours (any format version)."""
    try:
        return read_json(folder / MANIFEST).get("format") == "framepack_native"
    except CheckpointError:
        return False


def _check_dst(dst, overwrite):
    """Refuse a DST that is a file, a non-empty folder without overwrite, or (with it) a non-empty folder that is not a
    previous conversion. Creates nothing."""
    if dst.exists():
        if not dst.is_dir():
            raise ConversionError(f"{dst}: exists and is not a folder")
        if any(dst.iterdir()):
            if not overwrite:
                raise ConversionError(f"{dst}: folder exists and is not empty (pass --overwrite to replace a previous "
                                      "conversion)")
            if not _is_conversion(dst):
                raise ConversionError(f"{dst}: not a framepack_native conversion (no {MANIFEST} of ours); --overwrite "
                                      "replaces only a previous conversion: move it away or choose another DST")


def _follow(dst):
    """DST, or the folder a symbolic-link DST points to (converted in place there, the link kept). Dangling: refused."""
    if not dst.is_symlink():
        return dst
    try:
        return dst.resolve(strict=True)
    except (OSError, RuntimeError):  # missing target, or a loop
        raise ConversionError(f"{dst}: a symbolic link to {os.readlink(dst)}, which does not exist") from None


def _make_work(dst, kind, **fields):
    """Create our work folder .NAME.XXXXXXXX.<kind> beside dst: a marker naming it ours, locked while this process
    lives (the kernel drops the lock when it dies, SIGKILL too). Returns (folder, the lock's file descriptor)."""
    folder = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=f".{kind}"))
    fd = None
    try:
        fd = os.open(folder / WORK_MARK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with contextlib.suppress(OSError):  # a filesystem without locks: its leftovers are then never called stale
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"format": WORK_FORMAT, "kind": kind, "dst": dst.name, **fields}).encode())
    except BaseException:
        if fd is not None:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, fd


def _remove_work(folder, name):
    """Remove one of our work folders: its payload first and the marker last, so that a cut removal stays ours."""
    shutil.rmtree(folder / name, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


def _in_use(mark):
    """Whether a running conversion holds this work folder's marker locked."""
    try:
        fd = os.open(mark, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:  # held (BlockingIOError), or no locks here: never treat it as stale
        return True
    finally:
        os.close(fd)


def _leftovers(dst):
    """[(folder, marker)] of our work folders beside dst that no running conversion holds: the name pattern, and a
    marker naming dst inside. A user's folder that only looks like one is not among them."""
    found = []
    try:
        entries = sorted(dst.parent.iterdir())
    except OSError:
        return found
    for folder in entries:
        kind = folder.name.rsplit(".", 1)[-1]
        if not folder.name.startswith(f".{dst.name}.") or kind not in WORK_KINDS:
            continue
        mark = folder / WORK_MARK
        if folder.is_symlink() or not folder.is_dir() or mark.is_symlink() or not mark.is_file():
            continue
        try:
            doc = read_json(mark)
        except CheckpointError:
            continue
        if (doc.get("format"), doc.get("kind"), doc.get("dst")) == (WORK_FORMAT, kind, dst.name) and not _in_use(mark):
            found.append((folder, doc))
    return found


def _identity(path):
    st = os.stat(path)
    return [st.st_dev, st.st_ino]


def _size(folders):
    """The bytes in these folders' files, for messages: "1.2 GB"."""
    n = sum(f.lstat().st_size for folder in folders for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _tidy_leftovers(dst, clean):
    """Our work folders beside dst from conversions that no longer run: a DST that an --overwrite moved aside and
    never replaced is restored; what holds nothing, or an aside whose replacement is in place, goes; the rest is named
    in one LeftoverWork warning, or removed when `clean`."""
    stale = []
    for folder, doc in _leftovers(dst):
        payload = folder / dst.name
        if not os.path.lexists(payload):
            _remove_work(folder, dst.name)  # the marker alone
        elif doc["kind"] == "old" and not os.path.lexists(dst) and payload.is_dir() and not payload.is_symlink():
            os.rename(payload, dst)
            _remove_work(folder, dst.name)
            warnings.warn(LeftoverWork(f"{dst}: restored from {folder.name}, where an --overwrite that was cut short "
                                       "had moved it"))
        elif doc["kind"] == "old" and os.path.isdir(dst) and _identity(dst) == doc.get("replacement"):
            _remove_work(folder, dst.name)  # that --overwrite finished; only its clean-up was cut short
        else:
            stale.append(folder)
    if not stale:
        return
    listing = (f"{len(stale)} folder(s) left by conversions to {dst.name} that were killed: "
               f"{', '.join(f.name for f in stale)} ({_size(stale)})")
    if clean:
        for folder in stale:
            _remove_work(folder, dst.name)
        warnings.warn(LeftoverWork(f"removed from {dst.parent}: {listing}"))
    else:
        warnings.warn(LeftoverWork(f"{dst.parent}: {listing}; pass --clean-partial to remove them"))


def _put_in_place(new, dst, overwrite):
    """Rename the finished folder `new` to dst. Over nothing or an empty folder in one rename (the kernel refuses
    anything else); with overwrite, over a previous conversion, moved aside into a work folder of ours first and
    put back if the new one cannot follow. Anything else at dst is left as it is: ConversionError."""
    try:
        os.rename(new, dst)
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    if os.path.islink(dst) or not os.path.isdir(dst):
        now = "not a folder"
    elif not overwrite:
        now = "a folder that is not empty"
    elif not _is_conversion(dst):
        now = "a folder that is not a framepack_native conversion"
    else:
        now = None
    if now:
        raise ConversionError(f"{dst}: changed while converting, now {now}; left as it is, nothing written")
    aside, lock = _make_work(dst, "old", replacement=_identity(new))
    try:
        os.rename(dst, aside / dst.name)
        try:
            os.rename(new, dst)
        except BaseException:
            try:
                os.rename(aside / dst.name, dst)
            except OSError:
                raise ConversionError(f"{dst}: appeared again while replacing it; left as it is, the previous "
                                      f"conversion is in {aside}") from None
            raise
    except BaseException:
        if not os.path.lexists(aside / dst.name):
            _remove_work(aside, dst.name)
        raise
    finally:
        os.close(lock)
    _remove_work(aside, dst.name)  # the new DST is in place: a failure here changes nothing


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
    torch.bfloat16 / float16 / float32 or "bf16" / "fp16" / "fp32" casts the floating tensors.
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
    dst = _follow(given)
    for source in (src, transformer, image_encoder):
        if source is not None and dst.resolve() in (Path(source).resolve(), *Path(source).resolve().parents):
            raise ConversionError(f"{given}: would overwrite its own source {source}")
    _tidy_leftovers(dst, clean_partial)
    _check_dst(dst, overwrite)
    models, aux = _component_sources(src, transformer, image_encoder)
    single = not (src / "model_index.json").is_file() and not transformer and not image_encoder
    created = [p for p in reversed(dst.parents) if not p.exists()]  # outermost first; removed again on failure
    work = lock = None
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        work, lock = _make_work(dst, "partial")
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
        _put_in_place(new, dst, overwrite)
    except BaseException:
        if work is not None:
            _remove_work(work, dst.name)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        if lock is not None:
            os.close(lock)
    _remove_work(work, dst.name)  # holds only the marker now
    return given


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
