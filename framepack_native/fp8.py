"""Block-scaled float8 (E4M3) weights: quantise, dequantise, check (issue 18's building block; not wired into the
models or the converter yet).

Layout (musubi-tuner's `--fp8_scaled`, modules/fp8_optimization_utils.py): a weight (out, in) is stored as
float8_e4m3fn values q (out, in) and float32 scales s (out, in / B), one per B-wide block of inputs of each output row
(B = 64; per row, s (out, 1), when in is not a multiple of B): w ~= q * s, s = max |w| over the block / 448 (E4M3's
largest finite value), so each block's largest element lands on 448. An all-zero block gets s = 1 (q = 0): no scale
is ever zero, so a zero scale in a file means damage.

Error (what the tests assert, derived from the format): E4M3 keeps 3 mantissa bits, so a value w / s in the normal
range (>= 2^-6) rounds to within half a unit in the last place, a relative 2^-4; below it (subnormals, step 2^-9)
within 2^-10 absolute. Hence |w - q s| <= max(2^-4 |w|, 2^-10 s) per element, plus float32 rounding of the product.
"""
import torch

BLOCK = 64
E4M3_MAX = 448.0
REL_BOUND = 2.0 ** -4   # half an ulp of a 3-bit mantissa, relative
SUB_BOUND = 2.0 ** -10  # half the subnormal step 2^-9, in units of the scale


def _blocks(in_features, block):
    return block if in_features % block == 0 else in_features


def quantize_fp8(weight, block=BLOCK):
    """weight (out, in) float -> (q (out, in) float8_e4m3fn, scale (out, in // block or 1) float32)."""
    if weight.dim() != 2:
        raise ValueError(f"fp8 block scaling takes a 2-D weight (out, in), got {tuple(weight.shape)}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("cannot quantise a weight holding NaN or inf")
    out_f, in_f = weight.shape
    b = _blocks(in_f, block)
    w = weight.detach().float().reshape(out_f, in_f // b, b)  # (out, blocks, b)
    amax = w.abs().amax(dim=2, keepdim=True)  # (out, blocks, 1)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    q = (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q.reshape(out_f, in_f), scale.reshape(out_f, in_f // b)


def dequantize_fp8(q, scale, dtype=torch.bfloat16, out=None):
    """(q (out, in) float8_e4m3fn, scale (out, blocks) float32) -> w (out, in) in dtype (written into `out` if
    given: a reusable buffer of that shape and dtype)."""
    out_f, in_f = q.shape
    blocks = scale.shape[1]
    w = q.float().reshape(out_f, blocks, in_f // blocks) * scale.float()[..., None]
    w = w.reshape(out_f, in_f)
    if out is None:
        return w.to(dtype)
    return out.copy_(w)


def check_fp8_pair(name, q, scale, block=BLOCK):
    """ValueError naming the tensor for a stored fp8 weight whose scale does not fit it or is zero / negative / NaN."""
    if q.dtype != torch.float8_e4m3fn or q.dim() != 2:
        raise ValueError(f"{name}: an fp8 weight must be 2-D float8_e4m3fn, got {q.dtype} {tuple(q.shape)}")
    want = (q.shape[0], q.shape[1] // _blocks(q.shape[1], block))
    if scale.dtype != torch.float32 or tuple(scale.shape) != want:
        raise ValueError(f"{name}: its scale must be float32 {want} (one per {block}-wide block of each row), got "
                         f"{scale.dtype} {tuple(scale.shape)}")
    if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
        raise ValueError(f"{name}: its scale holds zero, negative, NaN or inf values (a damaged file)")
