"""Loading fp8 transformers: fp8 checkpoints as they are stored, float ones quantised tensor by tensor as they are
read (with LoRAs merged into each weight first), so host memory never holds the float model.

A checkpoint is fp8 when it holds `<module>.scale_weight` tensors (python -m weights_convert --dtype fp8): exactly
those modules become framepack_native.fp8.Fp8Linear, whatever `quantize` says, and each pair is checked as it is
loaded (a scale of the wrong shape or dtype, or holding zero / NaN, is one CheckpointError naming the file and the
tensor; so is a float8 tensor without its scales). A float checkpoint with quantize="fp8" gets every Linear of the
dual- and single-stream blocks quantised (framepack_native.fp8.block_linears), from the stored values read as
float32 (not from a bf16 rounding of them). LoRAs given to the load are merged into those float32 values before
quantising, with the arithmetic of framepack_native.lora's merge, and stay (an fp8 weight cannot be un-merged
exactly: reload to remove them).
"""
from pathlib import Path

import torch

from framepack_native.files import CheckpointError
from framepack_native.lora_formats import _module  # a submodule by name, None if there is none
from framepack_native.fp8 import (FP8, SCALE_SUFFIX, block_linears, check_fp8_pair, fp8_layers, quantize_blocks,
                                  quantize_fp8, scale_blocks)

QUANTIZE = (None, "fp8")


def lora_list(loras):
    """[(path, strength)] from paths or (path, strength) pairs."""
    from framepack_native.lora import check_strength
    out = []
    for item in loras or ():
        path, strength = (item, 1.0) if isinstance(item, (str, Path)) else item
        out.append((path, check_strength(strength)))
    return out


class QuantizingCheckpoint:
    """A float Checkpoint seen as the fp8 checkpoint of the same model: the weights of `modules` read as float32,
    LoRA deltas added, quantised, their `.scale_weight` made beside them; every other tensor as stored (LoRA deltas
    added in float32 where a LoRA touches it). The interface load_state uses (keys, shape, dtype, file, get,
    check_checksums, where)."""

    def __init__(self, checkpoint, modules, deltas):
        self.base, self.modules, self.deltas = checkpoint, set(modules), deltas  # deltas {module: [(Update, s)]}
        self._scales = {}  # module -> the scale made with its weight, until it is read

    @property
    def where(self):
        return self.base.where

    def check_checksums(self):
        self.base.check_checksums()

    def _split(self, name):
        module, _, leaf = name.rpartition(".")
        return module, leaf

    def keys(self):
        return self.base.keys() + [m + SCALE_SUFFIX for m in sorted(self.modules) if m + ".weight" in self.base]

    def __contains__(self, name):
        return name in self.base or name.endswith(SCALE_SUFFIX) and name[:-len(SCALE_SUFFIX)] in self.modules

    def shape(self, name):
        module, leaf = self._split(name)
        if leaf == SCALE_SUFFIX[1:] and module in self.modules:
            out_f, in_f = self.base.shape(module + ".weight")
            return (out_f, scale_blocks(in_f))
        return self.base.shape(name)

    def dtype(self, name):
        module, leaf = self._split(name)
        if module in self.modules and leaf in ("weight", SCALE_SUFFIX[1:]):
            return FP8 if leaf == "weight" else torch.bfloat16
        return self.base.dtype(name)

    def file(self, name):
        module, leaf = self._split(name)
        return self.base.file(module + ".weight" if leaf == SCALE_SUFFIX[1:] else name)

    def _read(self, name, device):
        """The stored tensor with its LoRA deltas added in float32; without any, as stored (its float32 values are
        exact from any float dtype, and quantize_fp8 converts them a chunk at a time)."""
        from framepack_native.lora import add_deltas
        module, leaf = self._split(name)
        if not self.deltas.get(module):
            return self.base.get(name, device=device)
        t = self.base.get(name, dtype=torch.float32, device=device)
        return add_deltas(t, leaf, self.deltas[module])

    def get(self, name, dtype=None, device="cpu"):
        module, leaf = self._split(name)
        if module in self.modules and leaf in ("weight", SCALE_SUFFIX[1:]):
            if leaf == SCALE_SUFFIX[1:] and module in self._scales:
                return self._scales.pop(module)
            try:
                q, scale = quantize_fp8(self._read(module + ".weight", device))
            except ValueError as e:
                raise CheckpointError(f"{self.base.file(module + '.weight')}: tensor {module + '.weight'!r}: {e}")
            if leaf == "weight":
                self._scales[module] = scale
                return q
            return scale
        if module in self.deltas and leaf in ("weight", "bias") and self.base.dtype(name).is_floating_point:
            return self._read(name, device).to(dtype or self.base.dtype(name))
        return self.base.get(name, dtype=dtype, device=device)


def stored_fp8_modules(checkpoint):
    """The modules a checkpoint stores in fp8 (those with a `.scale_weight`)."""
    return [k[:-len(SCALE_SUFFIX)] for k in checkpoint.keys() if k.endswith(SCALE_SUFFIX)]


def prepare(model, checkpoint, quantize=None, loras=()):
    """Make the meta-built `model` fit the checkpoint's fp8 layers, or quantise=`"fp8"` ones; returns (the
    checkpoint to load, {tensor name: None} for the tensors that keep their stored dtype: load_state's dtypes).
    LoRAs (path or (path, strength)) are read and checked against the model first; with no fp8 anywhere the caller
    merges them after the load instead (the usual undoable merge)."""
    stored = stored_fp8_modules(checkpoint)
    if stored:
        names = [m for m in stored if isinstance(_module(model, m), torch.nn.Linear)]
        if len(names) < len(stored):
            odd = sorted(set(stored) - set(names))[0]
            raise CheckpointError(f"{checkpoint.file(odd + SCALE_SUFFIX)}: tensor {odd + SCALE_SUFFIX!r} scales "
                                  f"{odd!r}, which is not a Linear layer of {type(model).__name__}")
        if lora_list(loras):
            raise CheckpointError(f"{checkpoint.where}: holds fp8 weights, and LoRAs merge before quantising: load "
                                  "a bf16 conversion with quantize='fp8' and the LoRAs instead")
    elif quantize:
        names = [n for n, _ in block_linears(model)]
        if not names:
            raise ValueError(f"quantize='fp8' quantises the Linear layers of the transformer blocks; "
                             f"{type(model).__name__} has none")
    else:
        names = []
    for k in checkpoint.keys():  # a float8 tensor outside the fp8 layers has no scale: it would load unscaled
        if checkpoint.dtype(k) == FP8 and not (k.endswith(".weight") and k[:-len(".weight")] in names):
            raise CheckpointError(f"{checkpoint.file(k)}: tensor {k!r} is float8_e4m3fn without its scales "
                                  f"({k.rpartition('.')[0]}{SCALE_SUFFIX})")
    if names and not stored:
        from framepack_native.lora_formats import read_lora
        deltas = {}
        for path, strength in lora_list(loras):  # read against the float layers, before they become fp8
            updates, _ = read_lora(path, model, shapes_only=True)
            for module, update in updates.items():
                deltas.setdefault(module, []).append((update, strength))
        checkpoint = QuantizingCheckpoint(checkpoint, names, deltas)
    quantize_blocks(model, names)
    keep = {key: None for n in names for key in (f"{n}.weight", n + SCALE_SUFFIX)}
    return checkpoint, keep


def check_loaded(model, checkpoint):
    """Every Fp8Linear's (weight, scale) pair checked: CheckpointError naming the file and the tensor."""
    for name, layer in fp8_layers(model).items():
        try:
            check_fp8_pair(name + ".weight", layer.weight, layer.scale_weight)
        except ValueError as e:
            raise CheckpointError(f"{checkpoint.file(name + SCALE_SUFFIX)}: {e}") from None


def check_stored(checkpoint):
    """Every stored (fp8 weight, scale) pair of a checkpoint checked, reading only the scales (weights_convert's
    verify): CheckpointError naming the file and the tensor."""
    for module in stored_fp8_modules(checkpoint):
        weight, scale_name = module + ".weight", module + SCALE_SUFFIX
        q = torch.empty(checkpoint.shape(weight), dtype=checkpoint.dtype(weight), device="meta")
        try:
            check_fp8_pair(weight, q, checkpoint.get(scale_name))
        except ValueError as e:
            raise CheckpointError(f"{checkpoint.file(scale_name)}: {e}") from None
