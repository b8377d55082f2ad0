"""Declarative key maps from reference checkpoints to native layouts, and the streaming plan that applies them.

A component module (weights_convert/<component>.py) defines CONVERTER = Converter(...). Its rules are
templated keys: "{}" matches an integer index, "{*}" any dotted suffix; the same placeholders appear on
both sides, in the same order.
    Rule("blocks.{}.qkv.weight", ("blocks.{}.to_q.weight", "blocks.{}.to_k.weight", "blocks.{}.to_v.weight"))
    Rule("norm_out.linear.weight", "norm_out.linear.weight", op="swap_halves")
    Drop("head.{*}")
Every source key must be consumed by exactly one rule or dropped; every native key produced.
"""
import dataclasses
import functools
import importlib
import re
from typing import Callable

import torch

from framepack_native.configs import check_field
from framepack_native.weights import CheckpointError

REQUIRED = object()


class ConversionError(ValueError):
    """A source checkpoint that cannot be converted: unknown architecture, unmapped or missing tensors."""


def source_field(src, name, default=REQUIRED, kind=None):
    """src[name] checked to be of `kind` (else the default's kind); absent: the default; null: allowed if it is None."""
    value = src.get(name, default)
    if value is REQUIRED:
        raise ConversionError(f"field {name!r} is missing")
    if value is None and default is None:
        return None
    if kind is None:
        if isinstance(default, (list, tuple)):
            kind = (type(default[0]) if default else None,)
        else:
            kind = type(default)
    check_field(None, name, value, kind, ConversionError)
    return value


@dataclasses.dataclass(frozen=True)
class Rule:
    """Native key `dst` from source key(s) `src` ("{}" a block index, "{*}" any suffix), through TRANSFORMS[op]."""
    dst: str
    src: "str | tuple[str, ...]"
    op: "str | None" = None


@dataclasses.dataclass(frozen=True)
class Drop:
    """Source key(s) matching `src` that the native model does not keep (e.g. a pooling head)."""
    src: str


def _swap_halves(t):
    a, b = t.chunk(2, dim=0)
    return torch.cat((b, a), dim=0)


# name -> (forward: list of source tensors -> native tensor, inverse: (native tensor, source shapes) -> list)
TRANSFORMS = {
    None: (lambda ts: ts[0], lambda t, shapes: [t]),
    "swap_halves": (lambda ts: _swap_halves(ts[0]), lambda t, shapes: [_swap_halves(t)]),
    "cat0": (lambda ts: torch.cat(ts, dim=0), lambda t, shapes: list(t.split([s[0] for s in shapes], dim=0))),
    "cat1": (lambda ts: torch.cat(ts, dim=1), lambda t, shapes: list(t.split([s[1] for s in shapes], dim=1))),
}


@dataclasses.dataclass(frozen=True)
class Converter:
    """How one reference component becomes a native one."""
    component: str                  # sub-folder name in a converted pipeline
    native_class: str               # "module:Class"
    source_classes: tuple           # diffusers `_class_name` / transformers `architectures` entries
    config: Callable                # (source config dict) -> native config fields
    rules: Callable                 # (native config fields) -> list of Rule / Drop
    model_types: tuple = ()         # transformers `model_type` values, for configs without `architectures`

    def load_class(self):
        module, name = self.native_class.split(":")
        return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class Step:
    """One native tensor: made from `srcs` (with their shapes) by `op`."""
    dst: str
    srcs: tuple
    src_shapes: tuple
    op: "str | None"


def _pattern(template):
    parts = re.split(r"(\{\}|\{\*\})", template)
    rx = "".join({"{}": r"(\d+)", "{*}": r"(.+?)"}.get(p, re.escape(p)) for p in parts)
    return re.compile(rx + r"\Z")


def _fill(template, groups):
    it = iter(groups)
    return re.sub(r"\{\}|\{\*\}", lambda m: next(it), template)


def _slots(template):
    return re.findall(r"\{\}|\{\*\}", template)


def build_plan(rules, src_shapes):
    """Match rules against the source keys. src_shapes: {key: shape}. Returns a list of Steps."""
    owner, steps = {}, []
    for rule in rules:
        if isinstance(rule, Drop):
            rx = _pattern(rule.src)
            for key in src_shapes:
                if rx.match(key):
                    owner.setdefault(key, rule)
            continue
        srcs = (rule.src,) if isinstance(rule.src, str) else tuple(rule.src)
        op = rule.op if (rule.op or len(srcs) == 1) else "cat0"
        if op not in TRANSFORMS:
            raise ValueError(f"rule for {rule.dst!r}: unknown op {op!r}")
        for s in srcs:
            if _slots(s) != _slots(rule.dst):
                raise ValueError(f"rule {rule}: placeholders differ between {s!r} and {rule.dst!r}")
        rx = _pattern(srcs[0])
        for key in list(src_shapes):
            m = rx.match(key)
            if not m:
                continue
            names = tuple(_fill(s, m.groups()) for s in srcs)
            absent = [n for n in names if n not in src_shapes]
            if absent:
                raise ConversionError(f"{rule.dst!r} needs {absent} alongside {key!r}, not in the source")
            for n in names:
                if n in owner:
                    raise ConversionError(f"source tensor {n!r} is claimed by two rules: {owner[n]} and {rule}")
                owner[n] = rule
            steps.append(Step(_fill(rule.dst, m.groups()), names, tuple(tuple(src_shapes[n]) for n in names), op))
    unmapped = sorted(k for k in src_shapes if k not in owner)
    if unmapped:
        raise ConversionError(f"{len(unmapped)} source tensors have no rule: {', '.join(unmapped[:8])}"
                              + (" ..." if len(unmapped) > 8 else ""))
    dsts = [s.dst for s in steps]
    if len(set(dsts)) != len(dsts):
        dup = sorted({d for d in dsts if dsts.count(d) > 1})
        raise ConversionError(f"native tensors produced twice: {dup[:8]}")
    return steps


def widest_dtype(dtypes):
    """The dtype that holds every one of `dtypes` exactly: fp32 over fp16 / bf16, and fp32 for fp16 + bf16 together
    (neither holds the other: bf16 has the range, fp16 the mantissa)."""
    return functools.reduce(torch.promote_types, dtypes)


def apply_step(step, tensors):
    """The native tensor of `step` from its source tensors."""
    return TRANSFORMS[step.op][0](list(tensors))


def planned_shape(step):
    """The native shape of a step, computed on the meta device."""
    metas = [torch.empty(s, dtype=torch.uint8, device="meta") for s in step.src_shapes]
    return tuple(apply_step(step, metas).shape)


def invert(steps, native):
    """Native -> source direction: {native key: tensor} -> {source key: tensor} (dropped keys absent)."""
    out = {}
    for step in steps:
        parts = TRANSFORMS[step.op][1](native[step.dst], step.src_shapes)
        for name, t in zip(step.srcs, parts):
            out[name] = t.contiguous()
    return out


def convert_state(converter, src_state, src_config):
    """In-memory conversion of a whole state dict (for tests and small models). Returns (native config, state)."""
    native_config = converter.config(src_config)
    steps = build_plan(converter.rules(native_config), {k: tuple(v.shape) for k, v in src_state.items()})
    return native_config, {s.dst: apply_step(s, [src_state[n] for n in s.srcs]) for s in steps}


def find_converter(config, where):
    """The registered converter for a component config (diffusers or transformers), else ConversionError."""
    from weights_convert.registry import converters
    names = []
    if isinstance(config.get("_class_name"), str):
        names.append(config["_class_name"])
    if isinstance(config.get("architectures"), list):
        names += [a for a in config["architectures"] if isinstance(a, str)]
    table = converters()
    for conv in table:
        if any(n in conv.source_classes for n in names):
            return conv
    model_type = config.get("model_type")
    for conv in table:
        if model_type and model_type in conv.model_types:
            return conv
    known = sorted(c for conv in table for c in conv.source_classes)
    found = names or ([f"model_type={model_type}"] if model_type else ["nothing"])
    raise ConversionError(f"{where}: unknown architecture {', '.join(found)}; this converter knows "
                          f"{', '.join(known) if known else 'no architectures yet'}")


def check_plan(steps, expected, where, file_of=None):
    """Compare the planned native shapes with the native model's state dict shapes ({key: shape}).

    Sources whose shapes cannot make their tensor (q, k, v of different widths) are a ConversionError naming the
    file (file_of(source key), else `where`) and the tensors."""
    from framepack_native.weights import check_keys
    planned = {}
    for step in steps:
        try:
            planned[step.dst] = planned_shape(step)
        except (RuntimeError, IndexError, ValueError) as e:  # torch's messages for cat / chunk of such shapes
            sources = ", ".join(f"{n!r} {shape}" for n, shape in zip(step.srcs, step.src_shapes))
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConversionError(f"{file_of(step.srcs[0]) if file_of else where}: tensors {sources} cannot make "
                                  f"{step.dst!r} ({step.op}): {reason}") from None
    try:
        check_keys(expected, planned, where)
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
