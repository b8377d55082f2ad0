"""The safetensors header: parsed and validated before any tensor is read.

The format: 8 bytes of little-endian header length, a JSON object ({name: {dtype, shape, data_offsets}} and an
optional "__metadata__" of strings), then the raw little-endian data. Everything a hostile or damaged header can
hold (deep nesting, repeated keys, sizes that are not integers >= 0 or overflow int64, offsets outside the data
or overlapping) is a CheckpointError naming the file and the tensor.
"""
import collections
import json
import math
import struct
from pathlib import Path

import torch

from framepack_native.files import CheckpointError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # as the safetensors library
MAX_TENSOR_BYTES = 2**63 - 1  # torch's sizes and byte counts are int64
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,  # fp8 weights (framepack_native.fp8)
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def itemsize(dtype):
    return torch.empty((), dtype=dtype).element_size()


def _shown(value, limit=60):
    """A parsed JSON value as a message shows it: JSON text, cut to `limit` characters."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Object(dict):
    """A JSON object as parsed here: `repeated` is its first key given twice (json.loads keeps the last silently)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        counts = collections.Counter(k for k, _ in pairs) if len(self) < len(pairs) else {}
        self.repeated = next((k for k, n in counts.items() if n > 1), None)


def _parse_header(path, raw):
    """The header's JSON: CheckpointError for bytes that are not UTF-8 JSON beginning with '{' or nest too deeply."""
    if raw[:1] != b"{":
        raise CheckpointError(f"{path}: header does not begin with '{{' (not a safetensors file?)")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_Object)
    except RecursionError:
        raise CheckpointError(f"{path}: header is not valid JSON (nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: JSONDecodeError, integers of over 4300 digits
        raise CheckpointError(f"{path}: header is not valid JSON ({e})") from None


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(path, name, info, data_len):
    """(dtype, shape, start, end) of one header entry, every number checked before it is used."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"{path}: tensor name {name!r} is not valid UTF-8") from None
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry (needs dtype, shape and "
                              f"data_offsets), got {_shown(info)}")
    if info.repeated is not None:
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry: key {info.repeated!r} "
                              "appears twice in it")
    dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {_shown(dtype_name)}, which is not supported")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {_shown(shape)} (a list of sizes >= 0)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))
            and 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{path}: tensor {name!r} has invalid data offsets {_shown(offsets)} (a pair "
                              "0 <= start <= end)")
    dtype, (start, end) = DTYPES[dtype_name], offsets
    if end > data_len:
        raise CheckpointError(f"{path}: tensor {name!r} ends at byte {end} past the data section ({data_len} "
                              "bytes): truncated file?")
    # torch multiplies every size, an empty dimension or not: an empty tensor can still overflow int64
    if math.prod(d for d in shape if d) * itemsize(dtype) > MAX_TENSOR_BYTES:
        raise CheckpointError(f"{path}: tensor {name!r} has shape {_shown(shape)}: its sizes multiply past "
                              f"2**63 - 1 bytes of {dtype_name}, more than torch can address")
    if end - start != math.prod(shape) * itemsize(dtype):
        raise CheckpointError(f"{path}: tensor {name!r} spans {end - start} bytes but shape {shape} of {dtype_name} "
                              f"needs {math.prod(shape) * itemsize(dtype)}")
    return dtype, tuple(shape), start, end


def read_header(path):
    """Parse and validate a safetensors header. Returns ({name: (dtype, shape, start, end)}, data_start, metadata).

    Refused with a CheckpointError naming the file (and the tensor): a header that is not a JSON object starting
    with '{', nests too deeply, repeats a key or has a `__metadata__` that is not an object of strings; a tensor
    with an unknown dtype, a size that is not an integer >= 0 (booleans and floats are not), sizes whose product
    passes 2**63 - 1 bytes, offsets that are not a pair of integers 0 <= start <= end inside the data section,
    a byte count that does not match the shape, or bytes shared with another tensor.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, too short for a header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: header length {n} is larger than the {MAX_HEADER_BYTES}-byte limit")
        if 8 + n > size:
            raise CheckpointError(f"{path}: header length {n} runs past the end of the file ({size} bytes)")
        raw = f.read(n)
    header = _parse_header(path, raw)  # an object: JSON that begins with '{' and parses is one
    if header.repeated is not None:
        raise CheckpointError(f"{path}: tensor {header.repeated!r} appears twice in the header")
    metadata = header.pop("__metadata__", _Object([]))
    if (not isinstance(metadata, dict) or metadata.repeated is not None
            or not all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{path}: __metadata__ must be an object of strings, got {_shown(metadata)}")
    data_start, data_len = 8 + n, size - 8 - n
    entries, spans = {}, []
    for name, info in header.items():
        entries[name] = _check_entry(path, name, info, data_len)
        _, _, start, end = entries[name]
        if end > start:
            spans.append((start, end, name))
    spans.sort()
    for (s0, e0, a), (s1, e1, b) in zip(spans, spans[1:]):
        if s1 < e0:
            raise CheckpointError(f"{path}: tensors {a!r} and {b!r} overlap in the data section")
    return entries, data_start, metadata
