"""framepack_native.weights: safetensors round trips, dtype casting, strict loading, damaged and pickle files."""
import json
import pickle
import struct

import pytest
import safetensors.torch
import torch
from torch import nn

from framepack_native.weights import (
    CheckpointError, load_state, open_checkpoint, save_safetensors, save_sharded, write_safetensors,
)


def random_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(7, 5, generator=g),
        "a.bias": torch.randn(7, generator=g),
        "b.weight": torch.randn(3, 7, generator=g).to(torch.bfloat16),
        "c.half": torch.randn(2, 3, 4, generator=g).to(torch.float16),
        "steps": torch.arange(6, dtype=torch.int64),
        "flag": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(3.5),
    }


def test_single_file_round_trip_matches_safetensors_library(tmp_path):
    state = random_state()
    save_safetensors(tmp_path / "m.safetensors", state, metadata={"format": "pt"})
    # the file is a standard safetensors file: the reference library reads it back identically
    theirs = safetensors.torch.load_file(tmp_path / "m.safetensors")
    ckpt = open_checkpoint(tmp_path / "m.safetensors")
    assert sorted(ckpt.keys()) == sorted(state)
    for k, v in state.items():
        assert torch.equal(theirs[k], v), k
        got = ckpt.get(k)
        assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), k


def test_reads_files_written_by_safetensors_library(tmp_path):
    state = random_state(1)
    safetensors.torch.save_file(state, tmp_path / "ref.safetensors")
    ckpt = open_checkpoint(tmp_path / "ref.safetensors")
    for k, v in state.items():
        assert torch.equal(ckpt.get(k), v), k


def test_sharded_round_trip(tmp_path):
    state = {f"layers.{i}.w": torch.randn(64, 33) for i in range(6)}
    specs = [(k, tuple(v.shape), v.dtype) for k, v in state.items()]
    files = save_sharded(tmp_path, specs, state.__getitem__, max_shard_bytes=3 * 64 * 33 * 4)
    assert files[-1] == "model.safetensors.index.json" and len(files) == 3
    index = json.loads((tmp_path / files[-1]).read_text())
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == 6 * 64 * 33 * 4
    ckpt = open_checkpoint(tmp_path)
    assert len(ckpt.files) == 2
    for k, v in state.items():
        assert torch.equal(ckpt.get(k), v)


def test_reads_transformers_style_sharded_folder(tmp_path):
    state = random_state(2)
    keys = sorted(state)
    shards = {"w-00001-of-00002.safetensors": keys[:4], "w-00002-of-00002.safetensors": keys[4:]}
    for name, ks in shards.items():
        safetensors.torch.save_file({k: state[k] for k in ks}, tmp_path / name)
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (tmp_path / "w.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ckpt = open_checkpoint(tmp_path)
    assert sorted(ckpt.keys()) == keys
    assert all(torch.equal(ckpt.get(k), state[k]) for k in keys)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_dtype_cast_on_read(tmp_path, dtype):
    state = random_state(3)
    save_safetensors(tmp_path / "m.safetensors", state)
    ckpt = open_checkpoint(tmp_path / "m.safetensors")
    for k in ("a.weight", "b.weight", "c.half"):
        got = ckpt.get(k, dtype=dtype)
        assert got.dtype == dtype
        assert torch.equal(got, state[k].to(dtype)), k


def test_misaligned_data_offsets_still_read(tmp_path):
    # a valid file whose float32 tensor starts at an odd byte offset (after a 3-byte uint8 tensor)
    a, b = torch.tensor([1, 2, 3], dtype=torch.uint8), torch.randn(5)
    header = {"a": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "b": {"dtype": "F32", "shape": [5], "data_offsets": [3, 23]}}
    raw = json.dumps(header).encode()
    (tmp_path / "odd.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + a.numpy().tobytes()
                                               + b.numpy().tobytes())
    ckpt = open_checkpoint(tmp_path / "odd.safetensors")
    assert torch.equal(ckpt.get("a"), a) and torch.equal(ckpt.get("b"), b)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.b = nn.Linear(7, 3, bias=False)
        self.register_buffer("steps", torch.zeros(6, dtype=torch.int64))


def tiny_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(7, 5, generator=g), "a.bias": torch.randn(7, generator=g),
            "b.weight": torch.randn(3, 7, generator=g), "steps": torch.arange(6)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_state_into_meta_model(tmp_path, dtype):
    state = tiny_state()
    save_safetensors(tmp_path / "m.safetensors", state)
    with torch.device("meta"):
        model = Tiny()
    load_state(model, tmp_path / "m.safetensors", dtype=dtype, device="cpu")
    assert model.a.weight.dtype == dtype and model.steps.dtype == torch.int64
    assert torch.equal(model.a.weight, state["a.weight"].to(dtype))
    assert torch.equal(model.steps, state["steps"])
    assert not any(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name, stored, message", [
    ("a.weight", torch.int32, "tensor 'a.weight' is stored as I32, the model needs a floating-point dtype"),
    ("steps", torch.int32, "tensor 'steps' is stored as I32, the model needs I64"),
    ("steps", torch.float32, "tensor 'steps' is stored as F32, the model needs I64"),
])
def test_load_state_refuses_a_stored_dtype_the_model_cannot_take(tmp_path, name, stored, message):
    state = tiny_state()
    state[name] = state[name].to(stored)
    save_safetensors(tmp_path / "m.safetensors", state)
    with torch.device("meta"):
        model = Tiny()
    with pytest.raises(CheckpointError, match=f"m.safetensors: {message}"):
        load_state(model, tmp_path / "m.safetensors", dtype=torch.float32, device="cpu")


def test_load_state_reports_missing_unexpected_and_misshaped_at_once(tmp_path):
    state = tiny_state()
    del state["a.bias"]
    state["b.weight"] = torch.randn(3, 8)
    state["extra.weight"] = torch.randn(2)
    save_safetensors(tmp_path / "bad.safetensors", state)
    with torch.device("meta"):
        model = Tiny()
    with pytest.raises(CheckpointError) as err:
        load_state(model, tmp_path / "bad.safetensors", device="cpu")
    msg = str(err.value)
    assert "bad.safetensors" in msg
    assert "missing 1: a.bias" in msg
    assert "unexpected 1: extra.weight" in msg
    assert "b.weight (3, 8) (expected (3, 7))" in msg


def _write_raw(path, header_bytes, data=b"", length=None):
    n = len(header_bytes) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header_bytes + data)
    return path


@pytest.mark.parametrize("case, message", [
    ("too_short", "too short for a header"),
    ("header_past_end", "runs past the end of the file"),
    ("huge_header", "larger than the"),
    ("bad_json", "not valid JSON"),
    ("not_object", "header does not begin with '{'"),
    ("unknown_dtype", 'dtype "F8_E9M9"'),
    ("truncated", "truncated file?"),
    ("size_mismatch", "needs 24"),
    ("overlap", "overlap"),
    ("negative_offsets", "invalid data offsets"),
    ("malformed_entry", "malformed header entry"),
    ("shape_not_list", "invalid shape"),
    ("dtype_not_str", "is not supported"),
])
def test_damaged_files_refused_naming_the_file(tmp_path, case, message):
    path = tmp_path / f"{case}.safetensors"
    ok = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    data = bytes(24)
    if case == "too_short":
        path.write_bytes(b"\x01\x02")
    elif case == "header_past_end":
        _write_raw(path, b"{}", length=4096)
    elif case == "huge_header":
        _write_raw(path, b"{}", length=2**62)
    elif case == "bad_json":
        _write_raw(path, b'{"a": [1, 2', data)
    elif case == "not_object":
        _write_raw(path, b"[1, 2, 3]", data)
    elif case == "unknown_dtype":
        _write_raw(path, json.dumps({"a": {**ok, "dtype": "F8_E9M9"}}).encode(), data)
    elif case == "truncated":
        _write_raw(path, json.dumps({"a": ok}).encode(), data[:10])
    elif case == "size_mismatch":
        _write_raw(path, json.dumps({"a": {**ok, "data_offsets": [0, 20]}}).encode(), data)
    elif case == "overlap":
        header = {"a": ok, "b": {"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32]}}
        _write_raw(path, json.dumps(header).encode(), bytes(32))
    elif case == "negative_offsets":
        _write_raw(path, json.dumps({"a": {**ok, "data_offsets": [-4, 20]}}).encode(), data)
    elif case == "malformed_entry":
        _write_raw(path, json.dumps({"a": {"dtype": "F32"}}).encode(), data)
    elif case == "shape_not_list":
        _write_raw(path, json.dumps({"a": {**ok, "shape": 6}}).encode(), data)
    elif case == "dtype_not_str":
        _write_raw(path, json.dumps({"a": {**ok, "dtype": ["F32"]}}).encode(), data)
    with pytest.raises(CheckpointError) as err:
        open_checkpoint(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


class Boom:
    """Unpickling this object would run code; the test proves it never runs."""
    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise AssertionError("a pickle file was unpickled")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.ckpt"])
def test_pickle_refused_without_unpickling(tmp_path, name, monkeypatch):
    (tmp_path / name).write_bytes(pickle.dumps({"w": Boom()}))
    monkeypatch.setattr(pickle, "load", _explode)
    monkeypatch.setattr(pickle, "loads", _explode)
    monkeypatch.setattr(torch, "load", lambda *a, **k: _explode())
    for target in (tmp_path / name, tmp_path):
        with pytest.raises(CheckpointError, match="never loaded.*convert it to safetensors"):
            open_checkpoint(target)


def test_index_pointing_to_missing_shard_or_outside(tmp_path):
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard gone.safetensors is missing"):
        open_checkpoint(tmp_path)
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../x.safetensors"}}))
    with pytest.raises(CheckpointError, match="points outside the folder"):
        open_checkpoint(tmp_path)
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": 5}}))
    with pytest.raises(CheckpointError, match="damaged index file"):
        open_checkpoint(tmp_path)
    (tmp_path / "m.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="m.safetensors.index.json: not valid JSON"):
        open_checkpoint(tmp_path)


def test_failed_write_leaves_nothing(tmp_path):
    def fetch(name):
        if name == "b":
            raise RuntimeError("source went away")
        return torch.zeros(2)
    with pytest.raises(RuntimeError, match="source went away"):
        write_safetensors(tmp_path / "out.safetensors", [("a", (2,), torch.float32), ("b", (2,), torch.float32)],
                          fetch)
    assert list(tmp_path.iterdir()) == []


def test_read_into_casts_in_place_and_checks_shape(tmp_path):
    state = random_state(4)
    save_safetensors(tmp_path / "m.safetensors", state)
    ckpt = open_checkpoint(tmp_path / "m.safetensors")
    out = torch.full((10, 5), float("nan"), dtype=torch.bfloat16)
    ckpt.read_into("a.weight", out[2:9])
    assert torch.equal(out[2:9], state["a.weight"].to(torch.bfloat16))
    assert out[:2].isnan().all() and out[9:].isnan().all()
    with pytest.raises(ValueError, match=r"stored shape \(7, 5\)"):
        ckpt.read_into("a.weight", out)
