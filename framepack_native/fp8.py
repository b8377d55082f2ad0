"""Block-scaled float8 (E4M3) weights for the transformer blocks' Linear layers: the format, the layer, the swap.

Format (ours; musubi-tuner's `--fp8_scaled` is the model, with a coarser block and power-of-two scales): a weight
(out, in) is stored as float8_e4m3fn values q (out, in) and bfloat16 scales s (out, in / B), one per B-wide block of
inputs of each output row (B = 128; one per row, s (out, 1), when in is not a multiple of B), w ~= q * s. Each s is
the power of two at or above max |w| over its block / 448 (E4M3's largest finite value), so every block's largest
element lands in (224, 448]. An all-zero block gets s = 1 (q = 0): no scale is ever zero, so a zero in a file is
damage. Why these choices:
- bytes: 1 + 2 / 128 per weight. The 13B transformer is 12.87 G parameters, 12.46 G of them in the blocks' Linear
  layers (3.40 G in the modulation Linears, which musubi leaves in bf16; here they are fp8 too), so the weights
  come to 0.524x bf16 (benchmarks/fp8_memory.py); musubi's layout (float32 scales per 64, modulation bf16) 0.67x.
- exactness: q * s is exact in bfloat16, float16 (within its range) and float32 (a 4-bit significand times a power
  of two), so dequantising adds no error of its own: the only error is E4M3's rounding.
- 128-wide blocks are the K tiles of an fp8 matmul with per-block scales (DeepSeek-V3's 1 x 128 scheme).

Error (what tests/test_fp8.py asserts, derived from the format): E4M3 keeps 3 mantissa bits, so a value w / s in the
normal range (>= 2^-6) rounds to within half a unit in the last place, a relative 2^-4; below it (subnormals, step
2^-9) to within 2^-10 absolute. Hence |w - q s| <= max(2^-4 |w|, 2^-10 s) per element.

Layer: Fp8Linear holds `weight` (float8_e4m3fn, a parameter without grad: offload streams it like any other),
`scale_weight` (bf16 buffer) and `bias` (the compute dtype); its forward dequantises the weight into a workspace
shared by every Fp8Linear on that device and dtype (one buffer the size of the largest layer, 132 MB at the real
widths in bf16), then multiplies in the input's dtype (F.linear). `quantize_blocks(model)` swaps every nn.Linear of
the dual- and single-stream blocks for one, in place.
"""
import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 128
E4M3_MAX = 448.0
FP8 = torch.float8_e4m3fn
SCALE_DTYPE = torch.bfloat16
SCALE_SUFFIX = ".scale_weight"  # a quantised layer's keys: <module>.weight (fp8), <module>.scale_weight, <module>.bias
REL_BOUND = 2.0 ** -4   # half an ulp of a 3-bit mantissa, relative
SUB_BOUND = 2.0 ** -10  # half the subnormal step 2^-9, in units of the scale
BLOCK_LISTS = ("double_blocks", "single_blocks")
CHUNK_ELEMENTS = 1 << 22  # quantised at a time  # where the quantised Linear layers live (as offload streams them)


def scale_blocks(in_features, block=BLOCK):
    """How many scales each row of an (out, in_features) weight has."""
    return in_features // block if in_features % block == 0 else 1


def quantize_fp8(weight, block=BLOCK):
    """weight (out, in) float -> (q (out, in) float8_e4m3fn, scale (out, scale_blocks(in)) bfloat16, powers of two).

    Row chunk by row chunk (~4 M elements), so the float32 temporaries stay small beside a 21504 x 3072 weight."""
    if weight.dim() != 2:
        raise ValueError(f"fp8 block scaling takes a 2-D weight (out, in), got {tuple(weight.shape)}")
    out_f, in_f = weight.shape
    blocks = scale_blocks(in_f, block)
    q = torch.empty(out_f, in_f, dtype=FP8, device=weight.device)
    scale = torch.empty(out_f, blocks, dtype=SCALE_DTYPE, device=weight.device)
    step = max(1, CHUNK_ELEMENTS // max(1, in_f))
    for r0 in range(0, out_f, step):
        w = weight[r0:r0 + step].detach().float().reshape(-1, blocks, in_f // blocks)  # (rows, blocks, b)
        if not bool(torch.isfinite(w).all()):
            raise ValueError("cannot quantise a weight holding NaN or inf")
        amax = w.abs().amax(dim=2, keepdim=True) / E4M3_MAX  # (rows, blocks, 1): the smallest scale that fits
        mantissa, exponent = torch.frexp(amax)  # amax = mantissa * 2^exponent, mantissa in [0.5, 1)
        s = torch.ldexp(torch.ones_like(amax), exponent - (mantissa == 0.5).int())  # 2^ceil(log2 amax)
        s = torch.where(amax > 0, s, torch.ones_like(s))
        # w / s is exact (a division by a power of two) and within E4M3's range; the cast rounds to nearest
        q[r0:r0 + step] = (w / s).clamp_(-E4M3_MAX, E4M3_MAX).reshape(-1, in_f)
        scale[r0:r0 + step] = s.reshape(-1, blocks)
    return q, scale


def dequantize_fp8(q, scale, dtype=torch.bfloat16, out=None):
    """(q (out, in) float8_e4m3fn, scale (out, blocks)) -> w = q * scale (out, in) in dtype, written into `out` if
    given (a reusable buffer of that shape and dtype). No temporary: q is converted into the buffer, then scaled."""
    out_f, in_f = q.shape
    blocks = scale.shape[1]
    if out is None:
        out = torch.empty(out_f, in_f, dtype=dtype, device=q.device)
    view = out.view(out_f, blocks, in_f // blocks)
    view.copy_(q.view(out_f, blocks, in_f // blocks))
    view.mul_(scale[..., None])
    return out


def check_fp8_pair(name, q, scale, block=BLOCK):
    """ValueError naming the tensor for a stored fp8 weight whose scale does not fit it or is zero / negative / NaN."""
    if q.dtype != FP8 or q.dim() != 2:
        raise ValueError(f"{name}: an fp8 weight must be 2-D float8_e4m3fn, got {q.dtype} {tuple(q.shape)}")
    want = (q.shape[0], scale_blocks(q.shape[1], block))
    if scale.dtype != SCALE_DTYPE or tuple(scale.shape) != want:
        raise ValueError(f"{name}: its scale must be bfloat16 {want} (one per {block}-wide block of each row), got "
                         f"{scale.dtype} {tuple(scale.shape)}")
    if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
        raise ValueError(f"{name}: its scale holds zero, negative, NaN or inf values (a damaged file)")


class _Workspaces:
    """One flat buffer per (device, dtype), grown to the largest weight dequantised into it, viewed per layer."""

    def __init__(self):
        self.buffers = {}

    def get(self, shape, dtype, device):
        n = shape[0] * shape[1]
        key = (torch.device(device), dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < n:
            self.buffers.pop(key, None)  # the old one is freed before the larger one is made
            with torch.inference_mode(False):  # a normal tensor: writable under no_grad and inference_mode alike
                buf = self.buffers[key] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)

    def clear(self):
        self.buffers.clear()


WORKSPACES = _Workspaces()


def release_workspaces():
    """Free the dequantisation buffers (they are made again at the next fp8 forward)."""
    WORKSPACES.clear()


class Fp8Linear(nn.Module):
    """nn.Linear with a block-scaled fp8 weight: weight (out, in) float8_e4m3fn, scale_weight (out, blocks) bf16,
    bias (out,) in the compute dtype. forward(x (..., in)) -> (..., out) in x's dtype."""

    def __init__(self, in_features, out_features, bias=True, dtype=None, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8, device=device),
                                   requires_grad=False)
        self.register_buffer("scale_weight", torch.empty(out_features, scale_blocks(in_features),
                                                         dtype=SCALE_DTYPE, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear):
        """The fp8 layer of an nn.Linear, its weight quantised (on the meta device: the structure only)."""
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        if not w.is_meta:
            q, scale = quantize_fp8(w)
            layer.weight, layer.scale_weight = nn.Parameter(q, requires_grad=False), scale
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.data, requires_grad=linear.bias.requires_grad)
        return layer

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8"

    def _apply(self, fn, recurse=True):
        # model.to(dtype) / .half() / .float() change the compute dtype (the bias) only: the fp8 values are cast
        # back (exactly: every E4M3 value is a float16 / bfloat16 / float32 one) and the scales keep theirs
        scale = self.scale_weight
        super()._apply(fn, recurse)
        if self.weight.dtype != FP8:
            self.weight.data = self.weight.data.to(FP8)
        if self.scale_weight.dtype != SCALE_DTYPE:
            self.scale_weight = scale.to(self.scale_weight.device)
        return self

    def dequantized(self, dtype, start=0, stop=None):
        """Rows [start, stop) of the weight in dtype, in the shared workspace (valid until the next dequantisation
        on this device and dtype; a fresh tensor when autograd is on, since backward would read it later)."""
        q, scale = self.weight[start:stop], self.scale_weight[start:stop]
        if torch.is_grad_enabled():
            return dequantize_fp8(q, scale, dtype)
        return dequantize_fp8(q, scale, dtype, out=WORKSPACES.get(tuple(q.shape), dtype, q.device))

    def rows(self, x, start, stop):
        """The outputs [start, stop) only: x (..., in) -> (..., stop - start)."""
        bias = None if self.bias is None else self.bias[start:stop]
        return F.linear(x, self.dequantized(x.dtype, start, stop), bias)

    def forward(self, x):
        return F.linear(x, self.dequantized(x.dtype), self.bias)


def linear_rows(linear, x, start, stop):
    """Outputs [start, stop) of an nn.Linear or an Fp8Linear, computing only those rows."""
    if isinstance(linear, Fp8Linear):
        return linear.rows(x, start, stop)
    bias = None if linear.bias is None else linear.bias[start:stop]
    return F.linear(x, linear.weight[start:stop], bias)


def block_linears(model, lists=None):
    """[(name, nn.Linear)] of the Linear layers inside the model's repeated blocks, the layers fp8 quantises: those
    of the module lists `lists`, by default the model's `fp8_block_lists` (the transformer's dual- and single-stream
    blocks: q/k/v and output projections, MLPs, modulation; the Llama encoder's layers), else BLOCK_LISTS."""
    lists = lists or getattr(model, "fp8_block_lists", BLOCK_LISTS)
    return [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear and name.split(".")[0] in lists]


def quantize_blocks(model, names=None):
    """Swap the block Linear layers of `model` (or those named) for Fp8Linear, in place, quantising their weights one
    at a time (each float weight is freed as its layer is replaced; on the meta device only the structure changes).
    Returns the names swapped. LoRAs must be merged before (framepack_native.lora refuses fp8 weights)."""
    targets = block_linears(model) if names is None else [(n, model.get_submodule(n)) for n in names]
    from framepack_native.lora import loras
    if any(lora.live for lora in loras(model)):
        raise ValueError("live LoRAs cannot be quantised into fp8 weights: remove them, or load them merged")
    if targets and not targets[0][1].weight.is_meta:
        model.__dict__.pop("_loras", None)  # merged LoRAs become part of the quantised weights (reload to remove)
    done = []
    with torch.no_grad():
        for name, linear in targets:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, Fp8Linear.from_linear(linear))
            done.append(name)
    return done


def fp8_layers(model):
    """{name: Fp8Linear} of a model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Fp8Linear)}
