"""Kernels of the hot path: attention, rotary embedding and the fused q/k RMSNorm + rotary.

Each op has a torch reference (kernels.reference), a Triton kernel (kernels.triton_attention,
kernels.triton_rope) and a dispatcher here taking backend="auto"|"torch"|"triton". "auto" picks Triton
for CUDA tensors when triton imports and the kernel covers the inputs (and torch.compile is not tracing),
torch otherwise; the environment variable FRAMEPACK_KERNELS=torch makes "auto" mean torch. A forced "triton"
that cannot run raises.
The Triton kernels are forward-only: "auto" takes torch when autograd needs the graph.
Attention under "auto" on CUDA may take SDPA's cuDNN backend instead of our kernel, where this device's measured table
says it is faster for an unmasked call of that length (kernels.dispatch; dispatch.attention_backend_for tells).
"""
import importlib
import os

import torch

from kernels import dispatch, reference

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "FRAMEPACK_KERNELS"
_modules = {}  # kernels.triton_* modules by name, or the ImportError that stopped them (no triton, old torch)


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {BACKENDS}")


def _triton_module(name):
    """kernels.<name>, imported on first use so that the torch path never imports triton; or its ImportError."""
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"kernels.{name}")
        except ImportError as err:
            _modules[name] = err
    return _modules[name]


def _use_triton(backend, module_name, tensors, unsupported):
    """Whether to run the Triton kernel; unsupported(module) names what the kernel cannot take, or is None."""
    _check_backend(backend)
    if backend == "torch":
        return False
    x = tensors[0]
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if backend == "auto":
        env = os.environ.get(ENV_VAR) or "auto"
        if env not in ("auto", "torch"):
            raise ValueError(f"{ENV_VAR}={env!r}; expected 'auto' or 'torch'")
        # Under torch.compile, "auto" leaves attention and RoPE to inductor (SDPA, fused elementwise code): on
        # torch 2.11 / Triton 3.6 inductor failed to compile these kernels as user kernels (RESULTS.md).
        if env == "torch" or x.device.type != "cuda" or needs_grad or torch.compiler.is_compiling():
            return False
        module = _triton_module(module_name)
        return not isinstance(module, ImportError) and unsupported(module) is None
    module = _triton_module(module_name)
    if isinstance(module, ImportError):
        raise RuntimeError(f"backend='triton' but the Triton kernels do not import ({module}); use backend='torch'")
    if x.device.type != "cuda" and not module.INTERPRET:
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors, got {x.device.type} tensors; use backend='torch', "
            "or set TRITON_INTERPRET=1 before triton is imported to run the kernels in Triton's CPU interpreter"
        )
    if needs_grad:
        raise RuntimeError("backend='triton' is forward-only but an input requires grad; use torch.no_grad()")
    reason = unsupported(module)
    if reason is not None:
        raise ValueError(f"backend='triton': {reason}; use backend='torch'")
    return True


def _entry(module_name, op):
    """The kernel's torch.library op while torch.compile traces, else its eager twin (no custom-op dispatch)."""
    module = _triton_module(module_name)
    return getattr(module, op if torch.compiler.is_compiling() else op + "_eager")


def _check_same(name, tensors, x):
    for other_name, other in tensors.items():
        if other is not None and other.device != x.device:
            raise ValueError(f"{other_name} is on {other.device} but {name} is on {x.device}")


def attention(q, k, v, *, kv_mask=None, kv_lens=None, scale=None, backend="auto"):
    """Softmax attention without causal mask (scale defaults to 1/sqrt(Dh)).

    q (B, Lq, N, Dh), k/v (B, Lk, N, Dh). Keys may be limited by at most one of: kv_mask bool (B, Lk),
    True = attend; kv_lens int (B,), batch b attends keys j < kv_lens[b] (padding at the end, as batched text;
    values are clamped to [0, Lk]). A row with no key to attend comes out 0. Returns (B, Lq, N, Dh).
    kv_lens is the fast form on the Triton path: padded keys are skipped, not masked.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention takes (B, L, N, Dh) tensors; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    B, Lq, N, Dh = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"attention shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[1] == 0:
        raise ValueError("attention needs at least one key; got k with Lk = 0")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention dtypes disagree: q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if kv_mask is not None and (kv_mask.dtype != torch.bool or tuple(kv_mask.shape) != (B, k.shape[1])):
        raise ValueError(f"kv_mask must be bool (B, Lk) = ({B}, {k.shape[1]}); "
                         f"got {kv_mask.dtype} {tuple(kv_mask.shape)}")
    if kv_lens is not None:
        if kv_mask is not None:
            raise ValueError("give kv_mask or kv_lens, not both")
        if kv_lens.dtype not in (torch.int32, torch.int64) or tuple(kv_lens.shape) != (B,):
            raise ValueError(f"kv_lens must be int32/int64 (B,) = ({B},); got {kv_lens.dtype} {tuple(kv_lens.shape)}")
    _check_same("q", {"k": k, "v": v, "kv_mask": kv_mask, "kv_lens": kv_lens}, q)

    chosen = _attention_backend(q, k, v, kv_mask, kv_lens, scale, backend)
    if chosen == "triton":
        scale_ = Dh**-0.5 if scale is None else float(scale)
        return _entry("triton_attention", "attention_fwd")(q, k, v, kv_mask, kv_lens, scale_)
    if chosen == "cudnn":
        from torch.nn.attention import SDPBackend
        return sdpa_attention(q, k, v, scale, SDPBackend.CUDNN_ATTENTION)
    if kv_lens is not None:
        kv_mask = torch.arange(k.shape[1], device=k.device)[None, :] < kv_lens[:, None]  # (B, Lk)
    out = reference.attention(q, k, v, kv_mask=kv_mask, scale=scale)
    if kv_mask is not None:
        # Rows with no key: 0, whatever SDPA backend ran (some have returned NaN there).
        out = out.masked_fill(~kv_mask.any(dim=1)[:, None, None, None], 0.0)
    return out


def _attention_backend(q, k, v, kv_mask, kv_lens, scale, backend, table=None):
    """"triton", "cudnn" or "torch" for an attention call (kernels.dispatch.attention_backend_for says it)."""
    Dh = q.shape[-1]

    def unsupported(module):
        if q.dtype not in module.DTYPES:
            return f"attention kernel takes {module.DTYPES}, got {q.dtype}"
        if Dh not in module.HEAD_DIMS:
            return f"attention kernel takes head dims {module.HEAD_DIMS}, got {Dh}"
        if scale is not None and not scale > 0:
            return f"attention kernel needs a positive scale, got {scale}"
        return None

    if not _use_triton(backend, "triton_attention", (q, k, v), unsupported):
        return "torch"
    if backend != "auto" or kv_mask is not None or kv_lens is not None:  # cuDNN only for unmasked calls
        return "triton"
    return dispatch.choose_backend(dispatch.device_name(q.device), dispatch.dtype_name(q.dtype), Dh, k.shape[1],
                                   False, dispatch.table() if table is None else table)


def sdpa_attention(q, k, v, scale, sdp_backend):
    """SDPA restricted to one backend (torch.nn.attention.SDPBackend) on (B, N, L, Dh) views of (B, L, N, Dh)
    tensors, unmasked; returns (B, Lq, N, Dh)."""
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel(sdp_backend):
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                               v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


def _check_rope(x, cos, sin, n_rope):
    """Validates x (B, L, N, Dh) and cos/sin (n, Dh); returns n, the number of rotated tokens (None = L)."""
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"rotary takes x (B, L, N, Dh) with Dh even; got {tuple(x.shape)}")
    L, Dh = x.shape[1], x.shape[3]
    n = L if n_rope is None else n_rope
    if not 0 <= n <= L:
        raise ValueError(f"n_rope must be within [0, L] = [0, {L}]; got {n}")
    if tuple(cos.shape) != (n, Dh) or tuple(sin.shape) != (n, Dh):
        raise ValueError(f"cos/sin must be ({n}, {Dh}); got cos {tuple(cos.shape)}, sin {tuple(sin.shape)}")
    _check_same("x", {"cos": cos, "sin": sin}, x)
    return n


def _rope_unsupported(x):
    def unsupported(module):
        if x.dtype not in module.DTYPES:
            return f"rotary kernel takes {module.DTYPES}, got {x.dtype}"
        if x.shape[-1] not in module.HEAD_DIMS:
            return f"rotary kernel takes head dims {module.HEAD_DIMS}, got {x.shape[-1]}"
        return None

    return unsupported


def apply_rope(x, cos, sin, *, backend="auto"):
    """Rotate pairs (2i, 2i+1) of x (B, L, N, Dh) by cos/sin (L, Dh) float32. Returns x.dtype."""
    _check_rope(x, cos, sin, None)
    if _use_triton(backend, "triton_rope", (x, cos, sin), _rope_unsupported(x)):
        return _entry("triton_rope", "rms_norm_rope_fwd")(x, None, cos, sin, 0.0, x.shape[1])
    return reference.apply_rope(x, cos, sin)


def rms_norm_rope(x, weight, cos, sin, *, eps, n_rope=None, backend="auto"):
    """q/k RMSNorm (weight (Dh,)) + rotary on the first n_rope tokens of x (B, L, N, Dh); cos/sin (n_rope, Dh)."""
    n = _check_rope(x, cos, sin, n_rope)
    if tuple(weight.shape) != (x.shape[-1],):
        raise ValueError(f"weight must be ({x.shape[-1]},); got {tuple(weight.shape)}")
    _check_same("x", {"weight": weight}, x)
    if _use_triton(backend, "triton_rope", (x, weight, cos, sin), _rope_unsupported(x)):
        return _entry("triton_rope", "rms_norm_rope_fwd")(x, weight, cos, sin, float(eps), n)
    return reference.rms_norm_rope(x, weight, cos, sin, eps, n_rope=n_rope)
