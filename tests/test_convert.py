"""weights_convert: rule matching, streaming conversion, atomic output, verify, CLI errors, round trip.

A toy component stands in for the real ones: a diffusers-like layout (separate q/k/v, a (scale, shift)
norm_out, a dropped head) converted to a native one (fused qkv, (shift, scale) order).
"""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

import weights_convert.folders
import weights_convert.registry
from framepack_native.models.loading import load_pretrained
from framepack_native.weights import CheckpointError
from weights_convert import ConversionError, Converter, Drop, Rule, convert, invert, verify
from weights_convert.__main__ import main
from weights_convert.core import build_plan, convert_state
from weights_convert.folders import convert_component, sha256


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    dim: int = 8
    depth: int = 2

    def __post_init__(self):
        if self.dim % 2:
            raise ValueError(f"dim must be even, got {self.dim}")

    def layer_counts(self):
        return {("depth", "blocks"): self.depth}


class ToyModel(nn.Module):
    config_class = ToyConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(nn.Linear(config.dim, 3 * config.dim) for _ in range(config.depth))
        self.norm_out = nn.Linear(config.dim, 2 * config.dim)


def toy_rules(cfg):
    return [
        Rule("blocks.{}.weight", tuple(f"layers.{{}}.attn.to_{x}.weight" for x in "qkv")),
        Rule("blocks.{}.bias", tuple(f"layers.{{}}.attn.to_{x}.bias" for x in "qkv")),
        Rule("norm_out.{*}", "norm_out.linear.{*}", op="swap_halves"),
        Drop("head.{*}"),
    ]


TOY = Converter(component="toy", native_class=f"{__name__}:ToyModel", source_classes=("ToyDiffusersModel",),
                config=lambda c: {"dim": c["hidden"], "depth": c["layers"]}, rules=toy_rules)


@pytest.fixture(autouse=True)
def toy_registry(monkeypatch):
    monkeypatch.setattr(weights_convert.registry, "converters", lambda: (TOY,))


def toy_source(path, dim=8, depth=2, seed=0, sharded=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(depth):
        for x in "qkv":
            state[f"layers.{i}.attn.to_{x}.weight"] = torch.randn(dim, dim, generator=g).to(dtype)
            state[f"layers.{i}.attn.to_{x}.bias"] = torch.randn(dim, generator=g).to(dtype)
    state["norm_out.linear.weight"] = torch.randn(2 * dim, dim, generator=g).to(dtype)
    state["norm_out.linear.bias"] = torch.randn(2 * dim, generator=g).to(dtype)
    state["head.proj.weight"] = torch.randn(3, dim, generator=g).to(dtype)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"_class_name": "ToyDiffusersModel", "hidden": dim, "layers": depth}))
    if sharded:
        keys = sorted(state)
        half = {"d-00001-of-00002.safetensors": keys[: len(keys) // 2],
                "d-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        for name, ks in half.items():
            safetensors.torch.save_file({k: state[k] for k in ks}, path / name)
        (path / "d.safetensors.index.json").write_text(
            json.dumps({"weight_map": {k: n for n, ks in half.items() for k in ks}}))
    else:
        safetensors.torch.save_file(state, path / "diffusion_pytorch_model.safetensors")
    return state


def expected_native(state, depth=2):
    out = {}
    for i in range(depth):
        for p in ("weight", "bias"):
            out[f"blocks.{i}.{p}"] = torch.cat([state[f"layers.{i}.attn.to_{x}.{p}"] for x in "qkv"])
    for p in ("weight", "bias"):
        scale, shift = state[f"norm_out.linear.{p}"].chunk(2)
        out[f"norm_out.{p}"] = torch.cat((shift, scale))
    return out


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_convert_then_load(tmp_path, sharded, dtype):
    state = toy_source(tmp_path / "src", sharded=sharded)
    dst = convert(tmp_path / "src", tmp_path / "dst", dtype=dtype)  # None: the fp32 source's own dtype
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["components"]["toy"]["class"] == "ToyModel"
    model = load_pretrained(ToyModel, dst, dtype=None, device="cpu")
    for k, v in expected_native(state).items():
        assert model.state_dict()[k].dtype == (dtype or torch.float32), k
        assert torch.equal(model.state_dict()[k], v.to(dtype or torch.float32)), k
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no temporary folder left


def test_sharded_output_and_verify(tmp_path):
    toy_source(tmp_path / "src", dim=16)
    dst = convert(tmp_path / "src", tmp_path / "dst", max_shard_bytes=2000)
    assert (dst / "model.safetensors.index.json").is_file()
    assert len(list(dst.glob("model-*.safetensors"))) > 1
    verify(dst)
    shard = sorted(dst.glob("model-*.safetensors"))[0]
    blob = bytearray(shard.read_bytes())
    blob[-1] ^= 0xFF
    shard.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum differs"):
        verify(dst)


def test_round_trip_native_to_source(tmp_path):
    src_state = toy_source(tmp_path / "src")
    native_config, native = convert_state(TOY, src_state, {"hidden": 8, "layers": 2})
    steps = build_plan(toy_rules(native_config), {k: tuple(v.shape) for k, v in src_state.items()})
    back = invert(steps, native)
    assert set(back) == set(src_state) - {"head.proj.weight"}
    for k, v in back.items():
        assert torch.equal(v, src_state[k]), k


def test_existing_folder_refused_and_overwrite(tmp_path):
    toy_source(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not empty.*--overwrite"):
        convert(tmp_path / "src", tmp_path / "dst")
    with pytest.raises(ConversionError, match="not a framepack_native conversion"):  # --overwrite replaces only ours
        convert(tmp_path / "src", tmp_path / "dst", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["keep.txt"]
    (tmp_path / "dst" / "keep.txt").unlink()
    convert(tmp_path / "src", tmp_path / "dst")  # an empty folder is taken
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    convert(tmp_path / "src", tmp_path / "dst", overwrite=True)  # a previous conversion is replaced, whole
    assert not (tmp_path / "dst" / "keep.txt").exists() and (tmp_path / "dst" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


@pytest.mark.parametrize("damage, message", [
    ("unknown_arch", "unknown architecture NotAModel"),
    ("unmapped", "have no rule: layers.0.extra"),
    ("missing_partner", "needs \\['layers.1.attn.to_k.weight'\\]"),
    ("wrong_shape", "mis-shaped"),
    ("pickle", "never loaded"),
    ("bad_config", "dim must be even"),
    ("int_weight", "diffusion_pytorch_model.safetensors: tensor 'layers.1.attn.to_k.weight' is stored as I32, "
                   "the model needs a floating-point dtype"),
])
def test_failed_conversion_leaves_nothing(tmp_path, damage, message):
    state = toy_source(tmp_path / "src")
    src = tmp_path / "src"
    if damage == "unknown_arch":
        (src / "config.json").write_text(json.dumps({"_class_name": "NotAModel"}))
    elif damage in ("unmapped", "missing_partner", "wrong_shape", "int_weight"):
        if damage == "int_weight":
            state["layers.1.attn.to_k.weight"] = state["layers.1.attn.to_k.weight"].to(torch.int32)
        elif damage == "unmapped":
            state["layers.0.extra"] = torch.zeros(2)
        elif damage == "missing_partner":
            del state["layers.1.attn.to_k.weight"]
        else:
            state["norm_out.linear.bias"] = torch.zeros(3)
        safetensors.torch.save_file(state, src / "diffusion_pytorch_model.safetensors")
    elif damage == "pickle":
        (src / "diffusion_pytorch_model.safetensors").unlink()
        (src / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    elif damage == "bad_config":
        (src / "config.json").write_text(json.dumps({"_class_name": "ToyDiffusersModel", "hidden": 7, "layers": 1}))
    with pytest.raises((ConversionError, CheckpointError), match=message):
        convert(src, tmp_path / "new" / "parents" / "dst")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nor the parent folders it had to create


def test_missing_source_creates_nothing(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path / "x" / "y" / "dst")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: no such folder\n"
    assert list(tmp_path.iterdir()) == []


def test_verify_refuses_an_integer_weight(tmp_path):
    toy_source(tmp_path / "src")
    dst = convert(tmp_path / "src", tmp_path / "dst")
    weights = dst / "model.safetensors"
    state = safetensors.torch.load_file(weights)
    state["norm_out.bias"] = state["norm_out.bias"].to(torch.int32)
    safetensors.torch.save_file(state, weights)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["components"]["toy"]["files"]["model.safetensors"] = sha256(weights)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="model.safetensors: tensor 'norm_out.bias' is stored as I32"):
        verify(dst)


def _interrupt_mid_conversion(monkeypatch, how):
    """Make the toy conversion stop after its weights are written: a KeyboardInterrupt or a real SIGTERM."""
    def stop(*args, **kwargs):
        convert_component(*args, **kwargs)
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        raise KeyboardInterrupt
    monkeypatch.setattr(weights_convert.folders, "convert_component", stop)


@pytest.mark.parametrize("how, code, line", [("ctrl_c", 130, "interrupted; nothing written\n"),
                                             ("sigterm", 143, "terminated; nothing written\n")])
def test_interrupted_conversion_leaves_nothing_and_prints_one_line(tmp_path, monkeypatch, capsys, how, code, line):
    toy_source(tmp_path / "src")
    _interrupt_mid_conversion(monkeypatch, how)

    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached the test: the converter installed no handler")

    previous = signal.signal(signal.SIGTERM, unhandled)  # without the fix, SIGTERM would end pytest itself
    try:
        assert main([str(tmp_path / "src"), str(tmp_path / "out" / "dst")]) == code
    except KeyboardInterrupt:  # would otherwise stop the whole pytest session
        pytest.fail("KeyboardInterrupt escaped the converter's command line")
    finally:
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the converter put the previous handler back
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_interrupted_overwrite_keeps_the_old_folder(tmp_path, monkeypatch):
    toy_source(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "dst")
    (tmp_path / "dst" / "mine.txt").write_text("old")
    rename = os.rename

    def stop_before_the_new_folder_moves_in(a, b):
        if Path(a).parent.name.endswith(".partial") and not os.path.lexists(b):  # the old DST is aside by now
            raise KeyboardInterrupt
        return rename(a, b)

    monkeypatch.setattr(os, "rename", stop_before_the_new_folder_moves_in)
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "src", tmp_path / "dst", overwrite=True)
    assert (tmp_path / "dst" / "mine.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_failing_cleanup_of_the_old_folder_does_not_fail_the_conversion(tmp_path, monkeypatch):
    toy_source(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "dst")
    rmtree = shutil.rmtree

    def refuse_old(path, ignore_errors=False, **kwargs):
        if any(part.startswith(".dst.") and part.endswith(".old") for part in Path(path).parts):
            if not ignore_errors:
                raise PermissionError(13, "Permission denied", str(path))
            return None
        return rmtree(path, ignore_errors=ignore_errors, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", refuse_old)
    assert convert(tmp_path / "src", tmp_path / "dst", overwrite=True) == tmp_path / "dst"
    verify(tmp_path / "dst")
    (aside,) = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the next run removes it without a word: its replacement is DST
        convert(tmp_path / "src", tmp_path / "dst", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"], aside


def test_rule_placeholders_must_agree():
    with pytest.raises(ValueError, match="placeholders differ"):
        build_plan([Rule("a.{}.w", "b.w")], {"b.w": (1,)})


def test_cli_errors_are_one_line_exit_2(tmp_path):
    toy_source(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "x").write_text("x")
    # a real subprocess: the registry has no toy there, so the architecture is unknown; either way one line
    for args in (["python", "-m", "weights_convert", str(tmp_path / "src"), str(tmp_path / "dst")],
                 ["python", "-m", "weights_convert", str(tmp_path / "nope"), str(tmp_path / "out")],
                 ["python", "-m", "weights_convert", "--verify", str(tmp_path / "src")]):
        proc = subprocess.run([sys.executable] + args[1:], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_output_gets_normal_permissions(tmp_path):
    import os
    toy_source(tmp_path / "src")
    umask = os.umask(0o022)
    try:
        dst = convert(tmp_path / "src", tmp_path / "dst")
    finally:
        os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in dst.iterdir()} == {0o644}


def test_destination_inside_its_source_refused_and_a_users_dot_old_folder_kept(tmp_path):
    toy_source(tmp_path / "src")
    for dst in (tmp_path / "src", tmp_path):
        with pytest.raises(ConversionError, match="would overwrite its own source"):
            convert(tmp_path / "src", dst, overwrite=True)
    assert (tmp_path / "src" / "config.json").is_file()
    convert(tmp_path / "src", tmp_path / "dst")
    (tmp_path / ".dst.old" / "leftover").mkdir(parents=True)  # not ours: no marker (see test_convert_safety.py)
    convert(tmp_path / "src", tmp_path / "dst", overwrite=True)
    assert (tmp_path / ".dst.old" / "leftover").is_dir() and (tmp_path / "dst" / "manifest.json").is_file()
