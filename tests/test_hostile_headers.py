"""Hostile safetensors headers: every one is a CheckpointError naming the file (and the tensor), never another
exception; a hypothesis fuzz over header bytes and JSON structures holds the reader to that."""
import json
import math
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from framepack_native.weights import DTYPES, CheckpointError, open_checkpoint

OK = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}


def _file(path, header, data=b"", length=None):
    """A safetensors file from header bytes (or a JSON-able header) and data; length overrides the prefix."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _entry(**fields):
    return {"w": {**OK, **fields}}


HOSTILE = {  # name: (header, data, what the message says after "FILE: ")
    "nested_arrays": (b"[" * 100_000 + b"]" * 100_000, b"", "header does not begin with '{'"),
    "nested_objects": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b"", "header is not valid JSON (nested too deeply)"),
    "nested_in_entry": (b'{"w": {"dtype": "F32", "shape": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", b"",
                        "header is not valid JSON (nested too deeply)"),
    "zero_beside_huge": (_entry(shape=[0, 2**70], data_offsets=[0, 0]), b"",
                         "tensor 'w' has shape [0, 1180591620717411303424]"),
    "product_overflows_int64": (_entry(dtype="U8", shape=[2**32, 2**32, 0], data_offsets=[0, 0]), b"",
                                "tensor 'w' has shape [4294967296, 4294967296, 0]"),
    "bytes_overflow_int64": (_entry(dtype="F64", shape=[0, 2**61], data_offsets=[0, 0]), b"",
                             "tensor 'w' has shape [0, 2305843009213693952]"),
    "bool_dim": (_entry(shape=[True, 6]), bytes(24), "tensor 'w' has an invalid shape [true, 6]"),
    "float_dim": (_entry(shape=[2.0, 3]), bytes(24), "tensor 'w' has an invalid shape [2.0, 3]"),
    "negative_dim": (_entry(shape=[-2, -3]), bytes(24), "tensor 'w' has an invalid shape [-2, -3]"),
    "bool_offsets": (_entry(dtype="U8", shape=[1], data_offsets=[False, True]), bytes(1),
                     "tensor 'w' has invalid data offsets [false, true]"),
    "offsets_past_2_63": (_entry(dtype="U8", shape=[0], data_offsets=[2**64, 2**64]), b"",
                          "tensor 'w' ends at byte 18446744073709551616 past the data section"),
    "offsets_not_a_pair": (_entry(data_offsets=[0, 24, 48]), bytes(24), "tensor 'w' has invalid data offsets"),
    "entry_not_object": ({"w": [1, 2]}, b"", "tensor 'w' has a malformed header entry"),
    "duplicate_tensor": (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                         b'"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}', bytes(16),
                         "tensor 'w' appears twice in the header"),
    "duplicate_field": (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "shape": [1]}}', bytes(8),
                        "tensor 'w' has a malformed header entry: key 'shape' appears twice in it"),
    "metadata_list": ({"__metadata__": [1, 2], **_entry()}, bytes(24), "__metadata__ must be an object of strings"),
    "metadata_number": ({"__metadata__": {"a": 5}, **_entry()}, bytes(24),
                        "__metadata__ must be an object of strings, got {\"a\": 5}"),
    "metadata_null": ({"__metadata__": None, **_entry()}, bytes(24), "__metadata__ must be an object of strings"),
    "surrogate_name": (b'{"\\ud800": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}', bytes(24),
                       "tensor name '\\ud800' is not valid UTF-8"),
    "leading_space": (b' {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}', bytes(24),
                      "header does not begin with '{'"),
    "integer_too_long": (b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 8]}}', bytes(8),
                         "header is not valid JSON"),
    "empty_header": (b"", b"", "header does not begin with '{'"),
    "not_json": (b"{x", b"", "header is not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_header_is_one_checkpoint_error(tmp_path, case):
    header, data, message = HOSTILE[case]
    path = _file(tmp_path / f"{case}.safetensors", header, data)
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(path)
    assert str(info.value).startswith(f"{path}: {message}"), str(info.value)[:300]
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_padding_and_odd_header_lengths_still_read(tmp_path):
    """The format lets writers pad with spaces and readers take any length (not only multiples of 8)."""
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    for pad in (0, 1, 5):
        raw = json.dumps({"__metadata__": {"format": "pt"}, "w": OK}).encode() + b" " * pad
        path = _file(tmp_path / f"pad{pad}.safetensors", raw, t.numpy().tobytes())
        assert torch.equal(open_checkpoint(path).get("w"), t)


def test_empty_tensor_with_large_dims_reads(tmp_path):
    path = _file(tmp_path / "e.safetensors", _entry(dtype="U8", shape=[0, 2**40], data_offsets=[0, 0]))
    assert open_checkpoint(path).get("w").shape == (0, 2**40)


# --- the fuzz -----------------------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=6)
DIM = st.one_of(st.integers(0, 4), st.integers(-2**70, 2**70), st.booleans(), st.floats(), st.none(),
                st.sampled_from([0, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64]))
VALID_TENSOR = st.tuples(st.sampled_from(sorted(DTYPES)), st.lists(st.integers(0, 3), max_size=3))


def _consistent(specs):
    """[(name, entry)] with offsets laid end to end, and the data size they need."""
    pairs, offset = [], 0
    for i, (dtype, shape) in enumerate(specs):
        n = math.prod(shape) * torch.empty((), dtype=DTYPES[dtype]).element_size()
        pairs.append((f"t{i}", {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}))
        offset += n
    return pairs, offset


@st.composite
def headers(draw):
    """(header bytes, data bytes, length prefix or None): valid files, valid files with one field made hostile,
    arbitrary JSON structures (duplicate keys too), deep nesting, and random byte edits of any of them."""
    specs = draw(st.lists(VALID_TENSOR, max_size=4))
    pairs, size = _consistent(specs)
    kind = draw(st.sampled_from(["valid", "one_field", "json", "nested", "metadata"]))
    if kind == "one_field" and pairs:
        i = draw(st.integers(0, len(pairs) - 1))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry", "name"]))
        name, entry = pairs[i]
        if field == "shape":
            entry = {**entry, "shape": draw(st.lists(DIM, max_size=4) | JSON)}
        elif field == "data_offsets":
            entry = {**entry, "data_offsets": draw(st.lists(DIM, max_size=3) | JSON)}
        elif field == "dtype":
            entry = {**entry, "dtype": draw(st.sampled_from(["F8_E5M2", "f32", ""]) | JSON)}
        elif field == "entry":
            entry = draw(JSON)
        else:
            name = draw(st.sampled_from(["t0", "__metadata__", "\ud800", "a\nb"]) | st.text(max_size=3))
        pairs[i] = (name, entry)
    elif kind == "json":
        pairs = draw(st.lists(st.tuples(st.text(max_size=3), JSON), max_size=4))
    elif kind == "metadata":
        pairs.insert(draw(st.integers(0, len(pairs))), ("__metadata__", draw(JSON)))
    raw = ("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}").encode()
    if kind == "nested":
        depth = draw(st.integers(1, 60_000))
        raw = draw(st.sampled_from([b"[", b'{"a":'])) * depth
    for _ in range(draw(st.integers(0, 2))):  # byte edits: flips, cuts and inserts
        if raw:
            at = draw(st.integers(0, len(raw) - 1))
            raw = raw[:at] + draw(st.binary(max_size=2)) + raw[at + draw(st.integers(0, 2)):]
    data_size = draw(st.sampled_from([size, max(size - 1, 0), size + 3]))
    length = draw(st.none() | st.sampled_from([0, 1, len(raw) + 1, 2**63]))
    return raw, bytes(range(256)) * (data_size // 256) + bytes(range(data_size % 256)), length


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(headers())
def test_fuzzed_headers_give_a_checkpoint_or_a_checkpoint_error(case):
    raw, data, length = case
    with tempfile.TemporaryDirectory() as tmp:
        path = _file(Path(tmp) / "fuzz.safetensors", raw, data, length)
        try:
            ckpt = open_checkpoint(path)
        except CheckpointError as e:
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
            return
        blob = path.read_bytes()
        data_start = 8 + struct.unpack("<Q", blob[:8])[0]
        header = json.loads(blob[8:data_start])
        for name in ckpt.keys():
            t = ckpt.get(name)
            start, end = header[name]["data_offsets"]
            assert tuple(t.shape) == tuple(header[name]["shape"]) and t.dtype == DTYPES[header[name]["dtype"]]
            stored = blob[data_start + start:data_start + end]
            if t.dtype == torch.bool:  # any non-zero byte reads as True
                stored = bytes(b != 0 for b in stored)
            assert t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() == stored
            if t.is_floating_point():
                assert ckpt.get(name, dtype=torch.float32).shape == t.shape
