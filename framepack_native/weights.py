"""Safetensors I/O that streams tensor by tensor: a 26 GB checkpoint on a 24 GB machine.

Headers are parsed and validated first (framepack_native.safetensors_header); each tensor is read through its own
memory map window, cast and moved, and the window closed, so peak host memory stays near one tensor.
Pickle checkpoints are refused, never unpickled. The JSON files beside the weights: framepack_native.configs.
"""
import concurrent.futures
import contextlib
import hashlib
import json
import math
import mmap
import re
import struct
import warnings
from pathlib import Path

import torch

from framepack_native.files import (CheckpointError, atomic_path, file_mode, read_json,  # noqa: F401 (re-exported)
                                    sha256, write_text_atomic)
from framepack_native.safetensors_header import (DTYPE_NAMES, DTYPES, MAX_HEADER_BYTES,  # noqa: F401 (re-exported)
                                                 MAX_TENSOR_BYTES, read_header)
from framepack_native.safetensors_header import itemsize as _itemsize

READ_CHUNK = 16 * 1024 * 1024
HASH_THREAD_BYTES = 1024 * 1024  # windows at least this large are hashed on the hashing thread, beside their copy
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _refuse_pickle(path):
    raise CheckpointError(
        f"{path}: pickle checkpoints are never loaded (unpickling can run arbitrary code); "
        "convert it to safetensors first")


def checksum_error(path, manifest):
    """The CheckpointError for a file of a converted folder whose SHA-256 differs from its manifest's."""
    manifest = Path(manifest)
    return CheckpointError(f"{path}: checksum differs from {manifest.name}: damaged or modified (re-convert, or "
                           f"python -m weights_convert --verify {manifest.parent})")


class _Digest:
    """The SHA-256 of one file, fed the byte ranges the reader maps; the bytes between them (the header) are read
    here. Ranges in file order, as a converted folder's are loaded, are hashed as they are copied, without a second
    read; any other order falls back to hashing the whole file again at the end."""

    def __init__(self, path, expected):
        self.path, self.expected = path, expected
        self.sha, self.pos = hashlib.sha256(), 0  # pos: bytes hashed so far; None once a range came out of order

    def _read_to(self, end):
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            while self.pos < end and (block := f.read(min(READ_CHUNK, end - self.pos))):
                self.sha.update(block)
                self.pos += len(block)

    def feed(self, start, buffer):
        if self.pos is None or start < self.pos:
            self.pos = None
            return
        self._read_to(start)
        self.sha.update(buffer)
        self.pos += len(buffer)

    def matches(self):
        if self.pos is None:
            return sha256(self.path) == self.expected
        self._read_to(self.path.stat().st_size)
        return self.sha.hexdigest() == self.expected


class Checkpoint:
    """A read-only view of one safetensors file or a folder of them; tensors are read one at a time.

    checksums: {file: SHA-256 hex digest} (a converted folder's manifest.json, named by `manifest`) to check the
    files against while they are read; check_checksums() then refuses a file that differs.
    """

    def __init__(self, files, checksums=None, manifest=None):
        self.files = [Path(f) for f in files]
        self._index = {}  # name -> (file, dtype, shape, absolute start, absolute end)
        for path in self.files:
            entries, data_start, _ = read_header(path)
            for name, (dtype, shape, start, end) in entries.items():
                if name in self._index:
                    raise CheckpointError(f"{path}: tensor {name!r} also stored in {self._index[name][0]}")
                self._index[name] = (path, dtype, shape, data_start + start, data_start + end)
        self.manifest = Path(manifest) if manifest else None
        self._digests = {Path(f): _Digest(Path(f), d) for f, d in (checksums or {}).items()}
        # hashing runs on its own thread (hashlib releases the GIL), beside the copy of the same window
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, "sha256") if self._digests else None

    def check_checksums(self):
        """Finish the checksums of every file given one (bytes not yet read are hashed now); a file that differs
        from its manifest entry is a CheckpointError naming it."""
        if self._hasher is not None:
            self._hasher.shutdown()
        for path, digest in self._digests.items():
            if not digest.matches():
                raise checksum_error(path, self.manifest or path.parent / "manifest.json")

    @property
    def where(self):
        """How messages name the checkpoint: its file, or the folder of its shards."""
        return self.files[0].parent if len(self.files) > 1 else self.files[0]

    def keys(self):
        return list(self._index)

    def __contains__(self, name):
        return name in self._index

    def __len__(self):
        return len(self._index)

    def shape(self, name):
        return self._index[name][2]

    def dtype(self, name):
        return self._index[name][1]

    def file(self, name):
        return self._index[name][0]

    def nbytes(self, name):
        _, _, _, start, end = self._index[name]
        return end - start

    @contextlib.contextmanager
    def _window(self, path, start, end):
        """Bytes [start, end) of a file as a read-only uint8 tensor over its own memory map, valid in the block.

        A file with a checksum to check has the same bytes hashed meanwhile, on the hashing thread."""
        base = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), end - base, offset=base, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: bytes {start}..{end} cannot be read ({e}): changed since it was "
                                  "opened?") from None
        digest = self._digests.get(path)
        try:
            with memoryview(mm) as whole, whole[start - base:] as window:
                hashed = None
                if digest and end - start < HASH_THREAD_BYTES:
                    digest.feed(start, window)  # a thread hand-off costs more than hashing a small window
                elif digest:
                    hashed = self._hasher.submit(digest.feed, start, window)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # read-only buffer: we only ever copy out of it
                        raw = torch.frombuffer(mm, dtype=torch.uint8, count=end - start, offset=start - base)
                    yield raw
                    del raw
                finally:
                    if hashed:
                        hashed.result()  # done with the window before it is unmapped
        finally:
            with contextlib.suppress(BufferError):  # a copy that failed may still hold its view: unmapped with it
                mm.close()

    def get(self, name, dtype=None, device="cpu"):
        """Read one tensor, cast to dtype, on device: one allocation, filled chunk by chunk from the file."""
        out = torch.empty(self.shape(name), dtype=dtype or self.dtype(name), device=device)
        return self.read_into(name, out)

    def read_into(self, name, out):
        """Copy one stored tensor into `out` (same shape; any dtype, device or strides).

        The file is mapped READ_CHUNK bytes of rows at a time and unmapped after each copy, so host memory
        holds the destination plus one chunk, never a second whole tensor.
        """
        path, src_dtype, shape, start, end = self._index[name]
        if tuple(out.shape) != shape:
            raise ValueError(f"{name}: stored shape {shape}, destination {tuple(out.shape)}")
        if out.numel() == 0:
            return out
        rows = shape[0] if shape else 1
        row_bytes = (end - start) // rows
        step = max(1, READ_CHUNK // row_bytes)
        flat = out.view(1) if not shape else out
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            with self._window(path, start + r0 * row_bytes, start + r1 * row_bytes) as raw:
                if raw.data_ptr() % _itemsize(src_dtype):
                    raw = raw.clone()  # misaligned for a typed view
                flat[r0:r1].copy_(raw.view(src_dtype).view(r1 - r0, *shape[1:]))
        return out


def _weight_map(index):
    """{tensor: shard file name} of a *.safetensors.index.json, checked."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: damaged index file (weight_map must map tensor names to file names)")
    return weight_map


def checkpoint_files(path):
    """The safetensors files of a checkpoint path: a file, a sharded folder (index.json) or a plain folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            _refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path}: not a .safetensors file")
        return [path]
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(f"{path}: several index files ({', '.join(p.name for p in indexes)})")
    if indexes:
        shards = sorted(set(_weight_map(indexes[0]).values()))
        for shard in shards:
            if Path(shard).name != shard:
                raise CheckpointError(f"{indexes[0]}: shard name {shard!r} points outside the folder")
            if Path(shard).suffix in PICKLE_SUFFIXES:
                _refuse_pickle(path / shard)
            if not (path / shard).is_file():
                raise CheckpointError(f"{indexes[0]}: shard {shard} is missing from {path}")
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: is a folder, not a safetensors file")
    if not files:
        pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            _refuse_pickle(pickles[0])
        raise CheckpointError(f"{path}: no .safetensors files")
    return files


def open_checkpoint(path, checksums=None, manifest=None):
    """Open a safetensors file or folder (sharded with an index, or plain) as a Checkpoint (checksums: see there)."""
    path = Path(path)
    files = checkpoint_files(path)
    ckpt = Checkpoint(files, checksums, manifest)
    index = sorted(path.glob("*.safetensors.index.json")) if path.is_dir() else []
    if index:
        missing = sorted(set(_weight_map(index[0])) - set(ckpt.keys()))
        if missing:
            raise CheckpointError(f"{index[0]}: tensors listed but not in any shard: {_short(missing)}")
    return ckpt


def _short(names, limit=8):
    names = list(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_keys(expected, found, where):
    """Raise one CheckpointError listing missing, unexpected and mis-shaped tensors.

    expected/found: {name: shape}.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(n for n in set(expected) & set(found) if tuple(expected[n]) != tuple(found[n]))
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_short(unexpected)}")
        if misshaped:
            parts.append(f"mis-shaped {len(misshaped)}: " + _short(
                f"{n} {tuple(found[n])} (expected {tuple(expected[n])})" for n in misshaped))
        raise CheckpointError(f"{where}: tensors do not match the model: " + "; ".join(parts))


def check_layer_counts(counts, keys, config_path, where, error=CheckpointError):
    """Refuse a config whose layer counts differ from the layers a checkpoint holds, before any model is built.

    counts: {(config field, key prefix): layers the config asks for}, e.g. {("num_hidden_layers", "layers"): 32};
    keys: the checkpoint's (native) tensor names, a layer of prefix P being the keys P.<i>.*.
    """
    for (field, prefix), n in counts.items():
        rx = re.compile(re.escape(prefix) + r"\.(\d+)\.")
        found = sorted({int(m.group(1)) for m in map(rx.match, keys) if m})
        if len(found) != n:
            held = f"{len(found)} ({prefix}.{found[0]} .. {prefix}.{found[-1]})" if found else f"no {prefix}.N"
            off = f"{n - len(found)} missing" if len(found) < n else f"{len(found) - n} unexpected"
            raise error(f"{config_path}: field {field!r} asks for {n} {prefix}.N, but {where} holds {held}: {off}")


def check_dtype(stored, expected, where, name):
    """Raise CheckpointError unless a stored dtype can fill a model tensor: floating for floating, else the same."""
    if stored == expected or stored.is_floating_point and expected.is_floating_point:
        return
    need = "a floating-point dtype" if expected.is_floating_point else DTYPE_NAMES.get(expected, str(expected))
    raise CheckpointError(f"{where}: tensor {name!r} is stored as {DTYPE_NAMES.get(stored, stored)}, "
                          f"the model needs {need}")


def check_checkpoint(model, checkpoint):
    """Raise one CheckpointError if the checkpoint's names, shapes or dtypes do not fit `model`'s state dict."""
    model_state = model.state_dict(keep_vars=True)
    check_keys({k: tuple(v.shape) for k, v in model_state.items()},
               {k: checkpoint.shape(k) for k in checkpoint.keys()}, checkpoint.where)
    for name, t in model_state.items():
        check_dtype(checkpoint.dtype(name), t.dtype, checkpoint.file(name), name)


def load_state(model, checkpoint, dtype=None, device="cpu", dtypes=None):
    """Load a checkpoint into `model` (typically built on the meta device): strict, assign, tensor by tensor.

    Floating tensors are cast to dtype (None keeps the stored one), or to their own in dtypes ({name: dtype, or
    None for the stored one: fp8 weights and their scales}); integer tensors keep theirs. A checkpoint opened with checksums is checked after the last
    tensor is read, before any is assigned to the model. checkpoint: a path, a Checkpoint, or an object with its
    reading interface (framepack_native.fp8_loading.QuantizingCheckpoint).
    """
    if isinstance(checkpoint, (str, Path)):
        checkpoint = open_checkpoint(checkpoint)
    check_checkpoint(model, checkpoint)
    expected = model.state_dict(keep_vars=True)
    state = {}
    for name in expected:
        wanted = (dtypes or {}).get(name, dtype) if checkpoint.dtype(name).is_floating_point else None
        state[name] = checkpoint.get(name, dtype=wanted, device=device)
    checkpoint.check_checksums()
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"{type(model).__name__}: tensors not stored in the checkpoint stayed on meta: "
                           f"{_short(leftover)} (non-persistent buffers must be computed, not stored)")
    return model


def _tensor_bytes(t):
    """The raw little-endian bytes of t as a buffer (no copy for a contiguous CPU tensor)."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy() if t.numel() else b""


def write_safetensors(path, specs, fetch, metadata=None):
    """Stream tensors into a safetensors file, atomically (temporary name, renamed when complete).

    specs: list of (name, shape, dtype) in write order; fetch(name) -> the tensor (checked against its spec).
    """
    path = Path(path)
    header, offset = {}, 0
    for name, shape, dtype in specs:
        n = math.prod(shape) * _itemsize(dtype)
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data section 8-byte aligned
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype in specs:
            t = fetch(name)
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(f"tensor {name!r}: got {tuple(t.shape)} {t.dtype}, planned {tuple(shape)} {dtype}")
            f.write(_tensor_bytes(t))
            del t


def save_safetensors(path, tensors, metadata=None):
    """Save a dict of tensors to one safetensors file, atomically."""
    specs = [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()]
    write_safetensors(path, specs, tensors.__getitem__, metadata)


def save_sharded(folder, specs, fetch, max_shard_bytes=5 * 1024**3, prefix="model", metadata=None):
    """Stream tensors into one file, or into shards <= max_shard_bytes with a `{prefix}.safetensors.index.json`.

    specs: list of (name, shape, dtype); fetch(name) -> tensor. Returns the written file names.
    """
    folder = Path(folder)
    shards, current, size = [], [], 0
    for spec in specs:
        n = math.prod(spec[1]) * _itemsize(spec[2])
        if current and size + n > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += n
    shards.append(current)
    if len(shards) == 1:
        write_safetensors(folder / f"{prefix}.safetensors", shards[0], fetch, metadata)
        return [f"{prefix}.safetensors"]
    names = [f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    for name, shard in zip(names, shards):
        write_safetensors(folder / name, shard, fetch, metadata)
        for tname, shape, dtype in shard:
            weight_map[tname] = name
            total += math.prod(shape) * _itemsize(dtype)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    write_text_atomic(folder / f"{prefix}.safetensors.index.json", json.dumps(index, indent=2))
    return names + [f"{prefix}.safetensors.index.json"]
