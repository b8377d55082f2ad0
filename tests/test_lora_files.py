"""LoRA files that must be refused (tests/test_lora.py: what they must do when good): wrong shapes, unknown keys,
A/B rank mismatch, pickles (never unpickled), truncated files, bad metadata and strengths, a failure part way through
a merge; each one line naming the file and key, with nothing changed in the loaded model."""
import pickle

import pytest
import torch

from framepack_native import lora
from framepack_native.lora import LoRAError, load_lora, parse_lora_arg
from tests.reference import lora as ref_lora
from tests.test_lora import assert_same_state, ours, snapshot, tiny  # noqa: F401 (fixtures)


def _good(shapes):
    return ref_lora.random_peft(shapes, seed=14, names=["transformer_blocks.0.attn.to_q", "proj_out"])


BAD = {  # name: (change to a good PEFT file, the message expected)
    "wrong A width": (lambda t: {**t, "transformer.single_transformer_blocks.1.proj_mlp.lora_A.weight":
                                 torch.zeros(2, 31), "transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight":
                                 torch.zeros(128, 2)},
                      r"proj_mlp.lora_A.weight' has shape \(2, 31\), single_blocks.1.linear1 \(224, 32\) rows 96..224"),
    "wrong B rows": (lambda t: {**t, "transformer.norm_out.linear.lora_A.weight": torch.zeros(2, 32),
                                "transformer.norm_out.linear.lora_B.weight": torch.zeros(32, 2)},
                     r"norm_out.linear.lora_B.weight' has shape \(32, 2\), final_layer.modulation \(64, 32\) needs "
                     r"\(64, 2\)"),
    "rank mismatch": (lambda t: {**t, "transformer.proj_out.lora_B.weight": torch.zeros(64, 5)},
                      r"proj_out.lora_B.weight' has rank 5, its lora_A .* rank 3 \(rank mismatch\)"),
    "unknown keys": (lambda t: {**t, "transformer.transformer_blocks.7.attn.to_q.lora_A.weight": torch.zeros(2, 32),
                                "transformer.some_head.lora_B.weight": torch.zeros(2, 2)},
                     r"2 tensors match no module of this transformer: transformer.some_head.lora_B.weight, "
                     r"transformer.transformer_blocks.7.attn.to_q.lora_A.weight \(allow_unknown=True skips them\)"),
    "A without B": (lambda t: {**t, "transformer.transformer_blocks.1.ff.net.2.lora_A.weight": torch.zeros(2, 128)},
                    r"module 'transformer_blocks.1.ff.net.2' has .*lora_A.weight' but not both lora_A"),
    "NaN": (lambda t: {**t, "transformer.proj_out.lora_A.weight": torch.full((3, 32), float("nan"))},
            r"proj_out.lora_A.weight' holds NaN or infinite values"),
    "factor on a norm": (lambda t: {**t, "transformer.transformer_blocks.0.attn.norm_k.lora_A.weight":
                                    torch.zeros(2, 16),
                                    "transformer.transformer_blocks.0.attn.norm_k.lora_B.weight": torch.zeros(16, 2)},
                         r"norm_k.lora_A.weight' is a LoRA factor for double_blocks.0.img_attn.norm_k \(16,\), a norm"),
    "DoRA": (lambda t: {**t, "transformer.proj_out.lora_magnitude_vector": torch.zeros(64)},
             r"belongs to a DoRA adapter, which is not supported"),
    "integer factor": (lambda t: {**t, "transformer.proj_out.lora_A.weight": torch.zeros(3, 32, dtype=torch.int32)},
                       r"proj_out.lora_A.weight' is stored as torch.int32"),
    "twice": (lambda t: {**t, "diffusion_model.proj_out.lora_A.weight": t["transformer.proj_out.lora_A.weight"]},
              r"tensors 'transformer.proj_out.lora_A.weight' and 'diffusion_model.proj_out.lora_A.weight' are both"),
}


def _assert_refused(model, path, pattern, **kw):
    before = snapshot(model)
    with pytest.raises(ValueError, match=pattern) as err:
        load_lora(model, path, **kw)
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    assert_same_state(model, before)
    assert not lora.loras(model) and all(type(m).__module__.startswith("torch.nn") or type(m).__module__.startswith(
        "framepack_native.models") for m in model.modules())
    return message


@pytest.mark.parametrize("live", [False, True], ids=["merged", "live"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_is_one_line_and_changes_nothing(tiny, ours, tmp_path, case, live):
    change, pattern = BAD[case]
    path = ref_lora.save(tmp_path / "bad.safetensors", change(_good(tiny[2])))  # the bad tensor comes last
    _assert_refused(ours, path, pattern, live=live)


@pytest.mark.parametrize("meta, message", [("{", "is not valid JSON"),
                                           ('{"lora_alpha": "x"}', "invalid lora_alpha 'x'"),
                                           ('{"alpha_pattern": {"(": 2}}', "invalid alpha_pattern key '\\('")])
def test_bad_metadata(tiny, ours, tmp_path, meta, message):
    path = ref_lora.save(tmp_path / "meta.safetensors", _good(tiny[2]), {"lora_adapter_metadata": meta})
    _assert_refused(ours, path, message)


def test_unknown_keys_accepted_with_a_warning(tiny, ours, tmp_path):
    tensors = {**_good(tiny[2]), "transformer.some_head.lora_A.weight": torch.zeros(2, 2)}
    path = ref_lora.save(tmp_path / "extra.safetensors", tensors)
    with pytest.warns(UserWarning, match=r"skipping 1 tensors that match no module: transformer.some_head"):
        handle = load_lora(ours, path, allow_unknown=True)
    assert handle.skipped == ("transformer.some_head.lora_A.weight",)
    assert set(handle.modules) == {"double_blocks.0.img_attn.qkv", "final_layer.linear"}


class _Unpickled:
    """Unpickling this creates the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["evil.pt", "evil.ckpt", "evil.bin", "evil.safetensors", "evil.lora"])
def test_pickles_are_never_unpickled(ours, tmp_path, name):
    marker, path = tmp_path / "unpickled", tmp_path / name
    path.write_bytes(pickle.dumps({"proj_out.lora_A.weight": _Unpickled(marker)}))
    message = _assert_refused(ours, path, r"pickle checkpoints are never loaded|not a \.safetensors file|header length")
    assert not marker.exists(), message


@pytest.mark.parametrize("cut", [0.5, 0.999, "header"])
def test_truncated_file(tiny, ours, tmp_path, cut):
    path = ref_lora.save(tmp_path / "whole.safetensors", _good(tiny[2]))
    raw = path.read_bytes()
    n = 40 if cut == "header" else int(len(raw) * cut)
    path.write_bytes(raw[:n])
    _assert_refused(ours, path, r"truncated file\?|runs past the end of the file")


@pytest.mark.parametrize("kind", ["missing", "pickle", "truncated"])
def test_check_lora_file_before_any_model(tiny, tmp_path, kind):
    """The CLI's early check needs no model: the same one-line refusals, from the file alone."""
    path = tmp_path / {"missing": "nope.safetensors", "pickle": "x.pt", "truncated": "t.safetensors"}[kind]
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"a": 1}))
    if kind == "truncated":
        raw = ref_lora.save(path, _good(tiny[2])).read_bytes()
        path.write_bytes(raw[:-10])
    with pytest.raises(LoRAError, match=r"no such file|pickle checkpoints are never loaded|truncated file") as err:
        lora.check_lora_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    if kind == "truncated":
        lora.check_lora_file(ref_lora.save(tmp_path / "ok.safetensors", _good(tiny[2])))  # a whole file passes


def test_failure_while_merging_leaves_the_model_as_it_was(tiny, ours, tmp_path, monkeypatch):
    """An error part way through the merge (here: the fourth tensor) undoes the tensors already merged."""
    path = ref_lora.save(tmp_path / "peft.safetensors", ref_lora.random_peft(tiny[2], seed=15))
    before, calls, merge = snapshot(ours), [], lora._Merged.__init__

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("out of memory (simulated)")
        merge(self, *args)

    monkeypatch.setattr(lora._Merged, "__init__", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        load_lora(ours, path)
    assert_same_state(ours, before)
    assert not lora.loras(ours)


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), True, "1"])
def test_bad_strength(tiny, ours, tmp_path, strength):
    path = ref_lora.save(tmp_path / "ok.safetensors", _good(tiny[2]))
    with pytest.raises(ValueError, match="LoRA strength must be a finite number"):
        load_lora(ours, path, strength)


def test_missing_file(ours, tmp_path):
    _assert_refused(ours, tmp_path / "nope.safetensors", r"no such file or folder")


# ---- the CLI's --lora FILE[:STRENGTH] ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("style.safetensors", ("style.safetensors", 1.0)),
    ("style.safetensors:0.5", ("style.safetensors", 0.5)),
    ("style.safetensors:-1.25e-1", ("style.safetensors", -0.125)),
    ("style.safetensors:.5", ("style.safetensors", 0.5)),
    ("a:b/style.safetensors", ("a:b/style.safetensors", 1.0)),
    ("a:b/style.safetensors:2", ("a:b/style.safetensors", 2.0)),
    ("style:v2.safetensors", ("style:v2.safetensors", 1.0)),
    ("style.safetensors:inf", ("style.safetensors:inf", 1.0)),  # not a decimal number: part of the name
])
def test_parse_lora_arg(text, expected):
    assert parse_lora_arg(text) == expected


@pytest.mark.parametrize("text, message", [(":0.5", "no file before the strength"),
                                           ("x.safetensors:1e999", "is not a finite number"),
                                           ("", "no file before the strength")])
def test_parse_lora_arg_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_lora_arg(text)


def test_lora_error_is_a_value_error():
    assert issubclass(LoRAError, ValueError)  # what the CLI catches (exit 2)
