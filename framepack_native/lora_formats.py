"""LoRA files for the FramePack / HunyuanVideo transformer: which native weight rows each file tensor lands on, and
read_lora, which reads and checks a whole file into one Update per native module (applied by framepack_native.lora).

Formats (../shared/FEATURES.md, "LoRA formats"):
- musubi-tuner / kohya: `lora_unet_<module, dots as _>.lora_down.weight / .lora_up.weight / .alpha`;
- diffusers / PEFT: `transformer.<module>.lora_A.weight / .lora_B.weight` (also `diffusion_model.`, PEFT's
  `base_model.model.` or no prefix; `.lora_B.bias`, `.alpha`, diffusers' `lora_adapter_metadata` for alpha);
- full deltas found in the wild: `<module>.diff` (weight) and `<module>.diff_b` (bias).
Module names are diffusers' (HunyuanVideoFramepackTransformer3DModel, the names musubi's FramePack LoRAs use) or the
original HunyuanVideo ones (`double_blocks.N.img_attn_qkv`, ..., as diffusers' _convert_hunyuan_video_lora_to_diffusers
reads them), bare or behind any of those prefixes. The diffusers names come from weights_convert.transformer's key map
(one source of the facts): its fused rules give the row blocks (q, k, v -> qkv; q, k, v, proj_mlp -> linear1) and
its swap_halves rule norm_out's (scale, shift) -> (shift, scale). The original names map one to one (their fused
qkv / linear1 and final_layer.adaLN_modulation.1's (shift, scale) are the native layout).
"""
import dataclasses
import json
import math
import re
import warnings

import torch

from framepack_native.files import CheckpointError
from framepack_native.safetensors_header import read_header
from framepack_native.weights import Checkpoint, checkpoint_files

PREFIXES = ("transformer.", "diffusion_model.", "base_model.model.", "")  # dotted module names follow
MUSUBI_PREFIX = "lora_unet_"  # the module name follows with its dots as underscores
KINDS = {  # key suffix -> what the tensor is
    ".lora_A.weight": "down", ".lora_down.weight": "down",
    ".lora_B.weight": "up", ".lora_up.weight": "up",
    ".lora_B.bias": "up_bias", ".lora_up.bias": "up_bias",
    ".alpha": "alpha", ".diff": "diff", ".diff_b": "diff_b",
}
UNSUPPORTED = {  # key suffix -> why such a file is refused (rather than listed as unknown keys)
    ".dora_scale": "DoRA", ".lora_magnitude_vector": "DoRA", ".hada_w1_a": "LoHa (LyCORIS)",
    ".lokr_w1": "LoKr (LyCORIS)", ".lokr_w1_a": "LoKr (LyCORIS)",
}
SWAP = "swap"  # part of diffusers' norm_out.linear: its (scale, shift) halves are the native (shift, scale)

_ORIGINAL_REFINER = "txt_in.individual_token_refiner.blocks.{}"
# original HunyuanVideo module -> native module (same layout: no row mapping)
ORIGINAL = [
    ("img_in.proj", "img_in"),
    ("time_in.mlp.0", "time_in.in_layer"), ("time_in.mlp.2", "time_in.out_layer"),
    ("guidance_in.mlp.0", "guidance_in.in_layer"), ("guidance_in.mlp.2", "guidance_in.out_layer"),
    ("vector_in.in_layer", "vector_in.in_layer"), ("vector_in.out_layer", "vector_in.out_layer"),
    ("txt_in.input_embedder", "txt_in.in_proj"),
    ("txt_in.t_embedder.mlp.0", "txt_in.t_embedder.in_layer"),
    ("txt_in.t_embedder.mlp.2", "txt_in.t_embedder.out_layer"),
    ("txt_in.c_embedder.linear_1", "txt_in.c_embedder.in_layer"),
    ("txt_in.c_embedder.linear_2", "txt_in.c_embedder.out_layer"),
    (f"{_ORIGINAL_REFINER}.norm1", "txt_in.blocks.{}.norm1"),
    (f"{_ORIGINAL_REFINER}.self_attn_qkv", "txt_in.blocks.{}.qkv"),
    (f"{_ORIGINAL_REFINER}.self_attn_proj", "txt_in.blocks.{}.proj"),
    (f"{_ORIGINAL_REFINER}.norm2", "txt_in.blocks.{}.norm2"),
    (f"{_ORIGINAL_REFINER}.mlp.fc1", "txt_in.blocks.{}.fc1"),
    (f"{_ORIGINAL_REFINER}.mlp.fc2", "txt_in.blocks.{}.fc2"),
    (f"{_ORIGINAL_REFINER}.adaLN_modulation.1", "txt_in.blocks.{}.gates"),
    *[(f"double_blocks.{{}}.{s}_{src}", f"double_blocks.{{}}.{s}_{dst}") for s in ("img", "txt") for src, dst in (
        ("mod.linear", "mod.lin"), ("attn_qkv", "attn.qkv"), ("attn_q_norm", "attn.norm_q"),
        ("attn_k_norm", "attn.norm_k"), ("attn_proj", "attn.proj"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"))],
    ("single_blocks.{}.linear1", "single_blocks.{}.linear1"),
    ("single_blocks.{}.linear2", "single_blocks.{}.linear2"),
    ("single_blocks.{}.q_norm", "single_blocks.{}.norm_q"),
    ("single_blocks.{}.k_norm", "single_blocks.{}.norm_k"),
    ("single_blocks.{}.modulation.linear", "single_blocks.{}.modulation.lin"),
    ("final_layer.linear", "final_layer.linear"),
    ("final_layer.adaLN_modulation.1", "final_layer.modulation"),
]


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a source module's output rows land: native `module`, `part` None (all rows, same order), 0..3 (row
    block j of a fused weight: q, k, v of hidden_dim rows each, then the MLP input) or SWAP (halves exchanged)."""
    module: str
    part: "int | str | None" = None

    def rows(self, out_rows, hidden_dim):
        """The native row of each source row: LongTensor (source rows,), for a native weight of `out_rows` rows."""
        D = hidden_dim
        if self.part is None:
            return torch.arange(out_rows)
        if self.part == SWAP:
            return torch.cat((torch.arange(out_rows // 2, out_rows), torch.arange(out_rows // 2)))
        return torch.arange(self.part * D, (self.part + 1) * D if self.part < 3 else out_rows)


class LoRAError(CheckpointError):
    """A LoRA file that cannot be applied to this model (a ValueError): the message names the file and the key."""


@dataclasses.dataclass
class Update:
    """One file's change to one native module at strength 1, float32: weight += up @ down + diff, bias += bias.

    down (R, prod(weight.shape[1:])), up (out, R) or both None; diff weight.shape or None; bias (out,) or None."""
    down: "torch.Tensor | None" = None
    up: "torch.Tensor | None" = None
    diff: "torch.Tensor | None" = None
    bias: "torch.Tensor | None" = None

    def to(self, device):
        return Update(*(None if t is None else t.to(device) for t in dataclasses.astuple(self)))

    def touches(self, name):
        return (self.up is not None or self.diff is not None) if name == "weight" else self.bias is not None

    def delta(self, name, strength, shape, r0, r1, out=None):
        """strength * the change of rows [r0, r1) of the module's `name` tensor of `shape`: float32 (r1-r0, ...),
        written into `out` if given (a float32 buffer of that shape)."""
        if out is None:
            source = self.bias if name == "bias" else self.down if self.up is not None else self.diff
            out = torch.empty((r1 - r0, *shape[1:]), dtype=torch.float32, device=source.device)
        if name == "bias":
            return torch.mul(self.bias[r0:r1], strength, out=out)
        if self.up is None:
            return torch.mul(self.diff[r0:r1], strength, out=out)
        torch.matmul(self.up[r0:r1] * strength, self.down, out=out.view(r1 - r0, -1))  # (rows, R) @ (R, in)
        return out if self.diff is None else out.add_(self.diff[r0:r1], alpha=strength)


def _diffusers_templates(config_fields):
    """[(diffusers module template, native module template, part)] from weights_convert.transformer's key map."""
    from weights_convert.core import Rule
    from weights_convert.transformer import rules
    out = []
    for rule in rules(config_fields):
        if not isinstance(rule, Rule):
            continue
        srcs = (rule.src,) if isinstance(rule.src, str) else tuple(rule.src)
        if rule.dst.endswith(".{*}"):  # a whole module, weight and bias (norm_out: halves swapped)
            out.append((srcs[0][:-len(".{*}")], rule.dst[:-len(".{*}")], SWAP if rule.op == "swap_halves" else None))
        elif rule.dst.endswith(".weight"):  # a norm's weight, or the weights of a fused Linear (its biases: the same)
            parts = [None] if len(srcs) == 1 else range(len(srcs))
            out += [(s[:-len(".weight")], rule.dst[:-len(".weight")], p) for s, p in zip(srcs, parts)]
    return out


class ModuleTable:
    """Every source module name a LoRA file may use for one transformer config -> (its dotted name, its Target).

    config: a FramePackTransformerConfig. Dotted names (diffusers and original) and musubi's underscored ones.
    """

    def __init__(self, config):
        counts = {prefix: n for (_, prefix), n in config.layer_counts().items()}  # native block lists
        pairs = _diffusers_templates(dataclasses.asdict(config)) + [(s, d, None) for s, d in ORIGINAL]
        self.dotted, self.underscored = {}, {}
        for src, dst, part in pairs:
            blocks = range(counts[dst.split(".{}")[0]]) if "{}" in dst else [None]
            for i in blocks:
                name, target = src.format(i), Target(dst.format(i), part)
                for table, key in ((self.dotted, name), (self.underscored, name.replace(".", "_"))):
                    if table.setdefault(key, (name, target))[1] != target:  # formats must never disagree on a name
                        raise AssertionError(f"LoRA module name {key!r} maps to {table[key][1]} and {target}")

    def resolve(self, key):
        """(source module name, kind, Target) of a file key, or None when no module of this model has that name."""
        for suffix, kind in KINDS.items():
            if key.endswith(suffix):
                module = key[:-len(suffix)]
                break
        else:
            return None
        if module.startswith(MUSUBI_PREFIX):
            found = self.underscored.get(module[len(MUSUBI_PREFIX):])
            return None if found is None else (found[0], kind, found[1])
        for prefix in PREFIXES:
            if module.startswith(prefix) and module[len(prefix):] in self.dotted:
                return (*self.dotted[module[len(prefix):]][:1], kind, self.dotted[module[len(prefix):]][1])
        return None


def unsupported(key):
    """The name of the unsupported adapter type a key belongs to (DoRA, LoHa, LoKr), else None."""
    return next((what for suffix, what in UNSUPPORTED.items() if key.endswith(suffix)), None)


def peft_alpha(metadata, module):
    """(alpha, rsLoRA?) of a PEFT module from diffusers' `lora_adapter_metadata` (a LoraConfig's fields), None if
    it says nothing. alpha_pattern keys match the module name's end as PEFT's get_pattern_key does."""
    if not metadata:
        return None
    alpha = metadata.get("lora_alpha")
    for pattern, value in (metadata.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    if alpha is None:
        return None
    return float(alpha), bool(metadata.get("use_rslora", False))


def _metadata(files):
    """diffusers' `lora_adapter_metadata` (a LoraConfig's fields) of the files, without its "transformer." prefix."""
    for path in files:
        raw = read_header(path)[2].get("lora_adapter_metadata")
        if raw is None:
            continue
        try:
            meta = json.loads(raw)
        except ValueError as e:
            raise LoRAError(f"{path}: its lora_adapter_metadata is not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise LoRAError(f"{path}: its lora_adapter_metadata is not a JSON object")
        if any(k.startswith("transformer.") for k in meta):
            meta = {k[len("transformer."):]: v for k, v in meta.items() if k.startswith("transformer.")}
        if meta.get("use_dora"):
            raise LoRAError(f"{path}: a DoRA adapter (use_dora in its metadata), which is not supported")
        _check_metadata(path, meta)
        return meta
    return None


def _check_metadata(path, meta):
    """The fields peft_alpha reads: lora_alpha a number, alpha_pattern {regex: number}, use_rslora a boolean."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    patterns = meta.get("alpha_pattern") or {}
    bad = None
    if "lora_alpha" in meta and meta["lora_alpha"] is not None and not number(meta["lora_alpha"]):
        bad = f"lora_alpha {meta['lora_alpha']!r}"
    elif not isinstance(patterns, dict) or not all(number(v) for v in patterns.values()):
        bad = f"alpha_pattern {patterns!r}"[:80]
    elif not isinstance(meta.get("use_rslora", False), bool):
        bad = f"use_rslora {meta['use_rslora']!r}"
    for pattern in patterns if bad is None else ():
        try:
            re.compile(pattern)
        except re.error as e:
            bad = f"alpha_pattern key {pattern!r} ({e})"
    if bad:
        raise LoRAError(f"{path}: lora_adapter_metadata has an invalid {bad}")


def _short(names, limit=8):
    names = list(names)
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _group_keys(ckpt, table, transformer, allow_unknown):
    """{(Target, source module): {kind: key}} of the file, and the keys that match nothing of this model."""
    groups, unknown = {}, []
    for key in ckpt.keys():
        what = unsupported(key)
        if what:
            raise LoRAError(f"{ckpt.file(key)}: tensor {key!r} belongs to a {what} adapter, which is not supported "
                            "(LoRA and full diff / diff_b deltas are)")
        found = table.resolve(key)
        if found is None or not isinstance(_module(transformer, found[2].module), torch.nn.Module):
            unknown.append(key)
            continue
        name, kind, target = found
        group = groups.setdefault((target, name), {})
        if kind in group:
            raise LoRAError(f"{ckpt.file(key)}: tensors {group[kind]!r} and {key!r} are both the {kind} of module "
                            f"{name!r}")
        group[kind] = key
    if unknown and not allow_unknown:
        raise LoRAError(f"{ckpt.where}: {len(unknown)} tensors match no module of this transformer: "
                        f"{_short(sorted(unknown))} (allow_unknown=True skips them)")
    if unknown:
        warnings.warn(f"{ckpt.where}: skipping {len(unknown)} tensors that match no module: {_short(sorted(unknown))}",
                      stacklevel=3)
    if not groups:
        raise LoRAError(f"{ckpt.where}: no LoRA tensors for this transformer in the file")
    return groups, unknown


def _module(transformer, name):
    try:
        return transformer.get_submodule(name)
    except AttributeError:
        return None


def _tensor(ckpt, key, shape=None, what=None):
    """A floating, finite tensor of the file as float32 (checked against `shape` if given)."""
    where = f"{ckpt.file(key)}: tensor {key!r}"
    if not ckpt.dtype(key).is_floating_point:
        raise LoRAError(f"{where} is stored as {ckpt.dtype(key)}; LoRA tensors are floating point")
    if shape is not None and tuple(ckpt.shape(key)) != tuple(shape):
        raise LoRAError(f"{where} has shape {tuple(ckpt.shape(key))}, {what} needs {tuple(shape)}")
    t = ckpt.get(key, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise LoRAError(f"{where} holds NaN or infinite values")
    return t


def _scale(ckpt, group, name, rank, metadata):
    """The scale of a LoRA piece: alpha / rank from its alpha key (0: rank, as kohya), else diffusers' metadata
    (PEFT keys only), else 1."""
    key = group.get("alpha")
    if key is not None:
        if ckpt.shape(key) not in ((), (1,)) or ckpt.dtype(key) == torch.bool:
            raise LoRAError(f"{ckpt.file(key)}: tensor {key!r} must be one number (alpha), got shape "
                            f"{tuple(ckpt.shape(key))} {ckpt.dtype(key)}")
        alpha = ckpt.get(key, dtype=torch.float64).item()
        if not math.isfinite(alpha):
            raise LoRAError(f"{ckpt.file(key)}: tensor {key!r} (alpha) is {alpha}")
        return alpha / rank if alpha else 1.0
    if ".lora_A." in group["down"]:
        found = peft_alpha(metadata, name)
        if found is not None:
            alpha, rslora = found
            return alpha / math.sqrt(rank) if rslora else alpha / rank
    return 1.0


def _span(module, rows, weight):
    """How messages name the rows of a native weight a piece lands on."""
    whole = len(rows) == weight.shape[0]
    return f"{module} {tuple(weight.shape)}" + ("" if whole else f" rows {int(rows[0])}..{int(rows[-1]) + 1}")


def _piece_shapes(weight, n):
    """(A shape without its rank, B shape without its rank, diff shape) of a piece of n rows on `weight`."""
    return tuple(weight.shape[1:]), (n, *[1] * (weight.ndim - 2)), (n, *weight.shape[1:])


def open_lora(path):
    """The LoRA file(s) at `path` as a Checkpoint, headers checked, no tensor read: a missing path, a pickle (never
    unpickled), any file that is not safetensors, or a damaged or truncated header is a LoRAError naming the file."""
    try:
        return Checkpoint(checkpoint_files(path))
    except CheckpointError as e:
        raise LoRAError(str(e)) from None


def read_lora(path, transformer, allow_unknown=False, shapes_only=False):
    """({native module name: Update}, skipped keys) of a LoRA file for `transformer`, every tensor checked.

    path: a .safetensors file (or a folder of them); anything else, pickles included, is refused unread.
    shapes_only: `transformer` may be on the meta device (only its modules' shapes are read: the fp8 loader merges
    the updates into the weights as it reads them, framepack_native.fp8_loading)."""
    ckpt = open_lora(path)
    metadata = _metadata(ckpt.files)
    table = ModuleTable(transformer.config)
    groups, unknown = _group_keys(ckpt, table, transformer, allow_unknown)
    hidden, pieces = transformer.config.hidden_dim, {}
    for (target, name), group in groups.items():
        module = transformer.get_submodule(target.module)
        weight, bias = module._parameters.get("weight"), module._parameters.get("bias")
        first = next(iter(group.values()))
        if weight is None or not weight.is_floating_point() or weight.element_size() < 2 or (
                weight.is_meta and not shapes_only):
            kind = "no weight" if weight is None else f"{weight.dtype} weights on {weight.device}"
            raise LoRAError(f"{ckpt.file(first)}: tensor {first!r} targets {target.module}, which has {kind}: LoRAs "
                            "apply to float16 / bfloat16 / float32 weights (merge before quantising to fp8)")
        rows = target.rows(weight.shape[0], hidden)
        a_shape, b_shape, d_shape = _piece_shapes(weight, len(rows))
        span = _span(target.module, rows, weight)
        piece = {"rows": rows}
        if ("down" in group) != ("up" in group) or (("alpha" in group or "up_bias" in group) and "down" not in group):
            present = ", ".join(repr(group[k]) for k in group)
            raise LoRAError(f"{ckpt.file(first)}: module {name!r} has {present} but not both lora_A (down) and "
                            "lora_B (up)")
        if "down" in group:
            dk, uk = group["down"], group["up"]
            if weight.ndim < 2:
                raise LoRAError(f"{ckpt.file(dk)}: tensor {dk!r} is a LoRA factor for {span}, a norm: only a "
                                "full .diff can change it")
            rank = ckpt.shape(dk)[0] if ckpt.shape(dk) else 0
            if rank < 1 or tuple(ckpt.shape(dk)[1:]) != a_shape:
                raise LoRAError(f"{ckpt.file(dk)}: tensor {dk!r} has shape {tuple(ckpt.shape(dk))}, {span} needs "
                                f"(rank, {', '.join(map(str, a_shape))})")
            up_found = tuple(ckpt.shape(uk))
            if len(up_found) >= 2 and up_found[0] == b_shape[0] and up_found[1] != rank:
                raise LoRAError(f"{ckpt.file(uk)}: tensor {uk!r} has rank {up_found[1]}, its lora_A {dk!r} rank "
                                f"{rank} (rank mismatch)")
            scale = _scale(ckpt, group, name, rank, metadata)
            piece["down"] = _tensor(ckpt, dk).flatten(1)  # (rank, in)
            piece["up"] = _tensor(ckpt, uk, (b_shape[0], rank, *b_shape[1:]), span).flatten(1) * scale  # (n, rank)
            if "up_bias" in group:
                if bias is None:
                    raise LoRAError(f"{ckpt.file(group['up_bias'])}: tensor {group['up_bias']!r} is a bias for "
                                    f"{target.module}, which has none")
                piece["bias"] = _tensor(ckpt, group["up_bias"], (len(rows),), span) * scale
        if "diff" in group:
            piece["diff"] = _tensor(ckpt, group["diff"], d_shape, span)
        if "diff_b" in group:
            if bias is None:
                raise LoRAError(f"{ckpt.file(group['diff_b'])}: tensor {group['diff_b']!r} is a bias delta for "
                                f"{target.module}, which has no bias")
            piece["diff_b"] = _tensor(ckpt, group["diff_b"], (len(rows),), span)
        pieces.setdefault(target.module, []).append(piece)
    updates = {name: _combine(transformer.get_submodule(name), ps) for name, ps in pieces.items()}
    return updates, unknown


def _combine(module, pieces):
    """The Update of a module from its pieces: A stacked, each scale * B in its rows and own columns."""
    weight = module._parameters["weight"]
    out, update = weight.shape[0], Update()
    factors = [p for p in pieces if "down" in p]
    if factors:
        update.down = torch.cat([p["down"] for p in factors])  # (R, in)
        update.up = torch.zeros(out, update.down.shape[0])  # (out, R), block-diagonal over the pieces
        col = 0
        for p in factors:
            r = p["down"].shape[0]
            update.up[p["rows"], col:col + r] = p["up"]
            col += r
    if any("diff" in p for p in pieces):
        update.diff = torch.zeros(weight.shape)
        for p in pieces:
            if "diff" in p:
                update.diff[p["rows"]] += p["diff"]
    if any("bias" in p or "diff_b" in p for p in pieces):
        update.bias = torch.zeros(out)
        for p in pieces:
            for k in ("bias", "diff_b"):
                if k in p:
                    update.bias[p["rows"]] += p[k]
    return update
