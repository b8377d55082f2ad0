"""LoRA on the FramePack transformer: one file read and checked whole, then merged into the weights or kept live.

Every format of framepack_native.lora_formats lands on the native modules as one update per module,
    weight += strength * (up @ down + diff),  bias += strength * bias_delta,
where down (R, in) stacks the A of every piece on that module and up (out, R) holds each piece's scale * B in its own
rows and columns (q, k, v LoRAs on a fused qkv: one rank-3r LoRA, A stacked, B block-diagonal); scale = alpha / rank
(alpha = rank when the file has none; alpha / sqrt(rank) for diffusers' rsLoRA metadata).

Merged (the default): added in float32 and cast back, module by module and row chunk by row chunk, in place, so no
second copy of the transformer is ever made and the packed host copies of framepack_native.offload change with it.
To undo it bit for bit, a merge keeps the factors (float32, on the host; the size of the LoRA) and, per chunk, the
elements where (merged - delta) does not round back to the original: their flat index and original value (measured
in benchmarks/RESULTS.md, a small fraction of the touched weights). unload_lora recomputes the delta with the same
arithmetic (float32 matmuls at "highest" precision) on the device that merged it, and patches those elements. Live:
the module's `weight` / `bias` become the original parameter plus the deltas at the current strengths, computed at
each use (its class swapped for a subclass with those properties; parameters, state_dict keys and offload see the
untouched originals), so strengths change and LoRAs come off without reloading; each use of a live module costs
one (out x R) @ (R x in) matmul.

Nothing is changed until framepack_native.lora_formats.read_lora has checked the whole file: a pickle (never
unpickled), a damaged or truncated header, keys that match no module (listed; allow_unknown=True skips them with a
warning), a shape that does not fit its module, A and B of different ranks or non-finite values are each one
LoRAError (a ValueError) line naming the file and key.
"""
import contextlib
import math
import numbers
import re
from pathlib import Path

import numpy as np
import torch

from framepack_native.lora_formats import LoRAError, open_lora, read_lora  # noqa: F401 (LoRAError: callers catch it)

CHUNK_ELEMENTS = 1 << 22  # rows merged at a time: ~4 M elements, ~60 MB of reused buffers
_STRENGTH = re.compile(r"(.*):([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")


class _Workspace:
    """Buffers reused by every chunk of a merge or an unload: fresh large allocations each page-fault anew."""

    def __init__(self, device):
        self.device, self.buffers = device, {}

    def get(self, name, shape, dtype):
        n = math.prod(shape)
        buf = self.buffers.get((name, dtype))
        if buf is None or buf.numel() < n:
            buf = self.buffers[(name, dtype)] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)


@contextlib.contextmanager
def _ieee_matmul():
    """float32 matmuls in full precision (no TF32 / bf16 passes), so that a delta recomputed at unload is the same."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _bits(t):
    return t.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _flat_nonzero(mask):
    """Flat indices of a contiguous mask's True entries (numpy's flatnonzero on the CPU: ~15x torch.nonzero's speed)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.view(-1).nonzero()[:, 0]


def _chunks(shape):
    rows = shape[0] if shape else 1
    step = max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


class _Merged:
    """One tensor's merge and what restores it exactly: per row chunk, the flat indices (in the chunk) where
    (merged - delta) does not round to the original, and their original values, on the host."""

    def __init__(self, module, name, update, strength, workspaces):
        p = module._parameters[name]
        self.module, self.name, self.update, self.strength = module, name, update, strength
        self.device, self.dtype, self.shape = p.device, p.dtype, tuple(p.shape)
        self.fixes = []
        ws = workspaces.setdefault(p.device, _Workspace(p.device))
        on_device = update.to(p.device)
        for r0, r1 in _chunks(self.shape):
            old, rows = p.data[r0:r1], (r1 - r0, *self.shape[1:])
            d = on_device.delta(name, strength, self.shape, r0, r1, ws.get("delta", rows, torch.float32))
            w = ws.get("float32", rows, torch.float32)
            new = ws.get("new", rows, p.dtype).copy_(w.copy_(old).add_(d))  # float32 sum, rounded to the dtype
            back = ws.get("back", rows, p.dtype).copy_(w.copy_(new).sub_(d))
            bad = _flat_nonzero(torch.ne(_bits(back), _bits(old), out=ws.get("bad", rows, torch.bool)))
            self.fixes.append((bad.to("cpu", torch.int32 if old.numel() < 2**31 else torch.int64),
                               old.reshape(-1)[bad].cpu()))
            old.copy_(new)  # in place: also into a packed host copy

    def undo(self, workspaces):
        p = self.module._parameters[self.name]
        if p.dtype != self.dtype or tuple(p.shape) != self.shape:
            raise RuntimeError(f"a LoRA was merged into a {self.dtype} {self.shape} tensor, now {p.dtype} "
                               f"{tuple(p.shape)}: the weights changed since, it cannot be removed exactly")
        merged_on = workspaces.setdefault(self.device, _Workspace(self.device))
        ws = workspaces.setdefault(p.device, _Workspace(p.device))  # where the weight is now
        on_device = self.update.to(self.device)  # the delta recomputed where the merge computed it
        for (r0, r1), (bad, values) in zip(_chunks(self.shape), self.fixes):
            cur, rows = p.data[r0:r1], (r1 - r0, *self.shape[1:])
            d = on_device.delta(self.name, self.strength, self.shape, r0, r1,
                                merged_on.get("delta", rows, torch.float32)).to(p.device)
            w = ws.get("float32", rows, torch.float32).copy_(cur).sub_(d)
            back = ws.get("back", rows, p.dtype).copy_(w)
            back.view(-1)[bad.to(back.device, torch.int64)] = values.to(back.device)
            cur.copy_(back)


def _live_tensor(module, name):
    """The live module's `name`: its parameter plus every live delta at its LoRA's current strength."""
    p = module._parameters[name]
    entries = [(lora, u) for lora, u in module.__dict__["_lora_live"] if u.touches(name)]
    if p is None or not entries:
        return p
    t = None  # float32: p + the deltas in load order, summed as a merge sums them
    for lora, update in entries:
        d = lora.on_device(module, update, p.device).delta(name, lora.strength, tuple(p.shape), 0, p.shape[0])
        t = d.add_(p) if t is None else t.add_(d)
    return t.to(p.dtype)


_LIVE_CLASSES = {}


def _live_class(cls, names):
    """A subclass of `cls` whose `names` (of "weight", "bias") are properties: the live tensors."""
    key = (cls, names)
    if key not in _LIVE_CLASSES:
        props = {n: property(lambda m, n=n: _live_tensor(m, n)) for n in names}
        _LIVE_CLASSES[key] = type(cls.__name__, (cls,), {**props, "_lora_base_class": cls, "__module__": __name__})
    return _LIVE_CLASSES[key]


class LoRA:
    """A LoRA file applied to a transformer (what load_lora returns): its path, strength, mode and modules."""

    def __init__(self, transformer, path, strength, live, updates, skipped):
        self.transformer, self.path, self.strength, self.live = transformer, Path(path), strength, live
        self.modules = tuple(updates)  # native module names it changes
        self.skipped = tuple(skipped)  # unknown keys skipped under allow_unknown
        self._updates, self._merged, self._device_updates = updates, [], {}

    def __repr__(self):
        return (f"LoRA({str(self.path)!r}, strength={self.strength}, {'live' if self.live else 'merged'}, "
                f"{len(self.modules)} modules)")

    def on_device(self, module, update, device):
        """The live update of `module` on `device` (moved once, then reused)."""
        key = (id(module), device)
        if key not in self._device_updates:
            self._device_updates[key] = update.to(device)
        return self._device_updates[key]

    def set_strength(self, strength):
        """Change a live LoRA's strength (the next forward uses it); a merged one must be reloaded with live=True."""
        if not self.live:
            raise ValueError(f"{self.path}: merged into the weights; its strength changes only by unloading it and "
                             "loading it again (or load it with live=True)")
        self.strength = check_strength(strength)

    def remove(self):
        """Take this LoRA off the model (a merged one: only the last merged, as merges stack)."""
        loaded = self.transformer.__dict__.get("_loras", [])
        if self not in loaded:
            raise ValueError(f"{self.path}: this LoRA is not loaded")
        if not self.live and [x for x in loaded if not x.live][-1] is not self:
            raise ValueError(f"{self.path}: LoRAs merged after it must come off first (or call unload_lora())")
        if self.live:
            for name in self.modules:
                module = self.transformer.get_submodule(name)
                module.__dict__["_lora_live"] = [e for e in module.__dict__["_lora_live"] if e[0] is not self]
                if not module.__dict__["_lora_live"]:
                    module.__class__ = module._lora_base_class
                    del module.__dict__["_lora_live"]
            self._device_updates.clear()
        else:
            _undo(self._merged)
            self._merged = []
        loaded.remove(self)

    def _merge(self):
        workspaces = {}
        try:
            with torch.no_grad(), _ieee_matmul():
                for name, update in self._updates.items():
                    module = self.transformer.get_submodule(name)
                    for pname in ("weight", "bias"):
                        if update.touches(pname):
                            self._merged.append(_Merged(module, pname, update, self.strength, workspaces))
        except BaseException:
            _undo(self._merged)  # the model as it was, also after a failure part way
            self._merged = []
            raise

    def _attach(self):
        for name, update in self._updates.items():
            module = self.transformer.get_submodule(name)
            if "_lora_live" not in module.__dict__:
                names = tuple(n for n in ("weight", "bias") if module._parameters.get(n) is not None)
                module.__class__ = _live_class(type(module), names)
                module.__dict__["_lora_live"] = []
            module.__dict__["_lora_live"].append((self, update))


def _undo(merged):
    """Undo merges, newest first."""
    workspaces = {}
    with torch.no_grad(), _ieee_matmul():
        for m in reversed(merged):
            m.undo(workspaces)


def add_deltas(tensor, name, updates):
    """Add the LoRA deltas [(Update, strength)] of a module's `name` ("weight" / "bias") to `tensor`, a float32 copy
    of it, in place: in load order, row chunk by row chunk with the arithmetic of a merge (the fp8 loader merges a
    LoRA into each weight before quantising it, so a float32 load merged and then quantised gives the same bits)."""
    with torch.no_grad(), _ieee_matmul():
        for update, strength in updates:
            if not update.touches(name):
                continue
            on_device = update.to(tensor.device)
            shape = tuple(tensor.shape)
            for r0, r1 in _chunks(shape):
                tensor[r0:r1].add_(on_device.delta(name, strength, shape, r0, r1))
    return tensor


def check_strength(strength):
    """strength as a float; ValueError unless a finite real number."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(strength):
        raise ValueError(f"LoRA strength must be a finite number, got {strength!r}")
    return float(strength)


def parse_lora_arg(text):
    """`FILE[:STRENGTH]` (the CLI's --lora) -> (path, strength); only a trailing `:<decimal number>` is a strength."""
    m = _STRENGTH.fullmatch(text)
    path, strength = (m[1], float(m[2])) if m else (text, 1.0)
    if not path:
        raise ValueError(f"--lora {text!r}: no file before the strength (FILE[:STRENGTH])")
    if not math.isfinite(strength):
        raise ValueError(f"--lora {text!r}: strength {m[2]} is not a finite number")
    return path, strength


def check_lora_file(path):
    """Refuse, before any model loads, what no model can use (the CLI's early check): a missing path, a pickle
    (never unpickled), a file that is not safetensors, a damaged or truncated header; LoRAError naming the file."""
    open_lora(path)


def loras(transformer):
    """The LoRAs applied to `transformer`, in load order."""
    return list(transformer.__dict__.get("_loras", []))


def load_lora(transformer, path, strength=1.0, *, live=False, allow_unknown=False):
    """Apply a LoRA file (framepack_native.lora_formats' formats) to a FramePackTransformer; returns its LoRA handle.

    strength: the multiplier of the whole file; live=False merges it into the weights (free at run time, undone
    exactly by unload_lora), live=True keeps it beside them (strength changeable with set_strength, removable with
    remove()). Repeatable: several LoRAs add up. Every error (ValueError naming the file and the key) is raised
    before anything changes.
    """
    strength = check_strength(strength)
    updates, skipped = read_lora(path, transformer, allow_unknown)
    lora = LoRA(transformer, path, strength, live, updates, skipped)
    if live:
        lora._attach()
    else:
        lora._merge()
    transformer.__dict__.setdefault("_loras", []).append(lora)
    return lora


def unload_lora(transformer):
    """Remove every LoRA from `transformer` (newest first), restoring its weights bit for bit; returns them."""
    removed = loras(transformer)[::-1]
    for lora in removed:
        lora.remove()
    return removed
