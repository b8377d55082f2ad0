"""What the steps of benchmarks/gpu_check.py share: the report (log, step, save), the float32 oracle and the
correctness cases. Each case draws fresh random inputs, runs ours and returns a dict with its error."""
import json
import time
import traceback

import torch

import kernels
from benchmarks.common import rel_l2
from kernels import reference

TOL = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 2e-2}
REPORT = {"steps": {}, "log": []}
ONLY = []  # --only: run just the steps whose names start with one of these


def log(*parts):
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    REPORT["log"].append(line)


def save(out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps({k: v for k, v in REPORT.items() if k != "log"}, indent=1))
    (out_dir / "gpu_check.log").write_text("\n".join(REPORT["log"]) + "\n")


def step(name, out_dir):
    """Decorator: run fn(), store its result (or the traceback) under REPORT['steps'][name], save the files."""
    def wrap(fn):
        if ONLY and not any(name.startswith(prefix) for prefix in ONLY):
            return fn
        start = time.perf_counter()
        log(f"== {name}")
        try:
            REPORT["steps"][name] = {"ok": True, "result": fn()}
        except Exception:  # noqa: BLE001 - a failed step is recorded, the next one still runs
            log(traceback.format_exc())
            REPORT["steps"][name] = {"ok": False, "error": traceback.format_exc()[-3000:]}
        REPORT["steps"][name]["seconds"] = round(time.perf_counter() - start, 1)
        save(out_dir)
        return fn

    return wrap


def fp32_attention(q, k, v, mask):
    """The oracle: SDPA on float32 copies (efficient backend on CUDA: no L x L scores at 30k tokens)."""
    if q.device.type != "cuda":
        return reference.attention(q.double(), k.double(), v.double(), kv_mask=mask)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        return reference.attention(q.float(), k.float(), v.float(), kv_mask=mask)


def padding_mask(B, L, text, valid, device):
    """(B, L) bool: all image tokens visible, then `text` text tokens of which valid[b] are real."""
    mask = torch.ones(B, L, dtype=torch.bool, device=device)
    for b, n in enumerate(valid):
        mask[b, L - text + n:] = False
    return mask


def attention_case(device, B, Lq, Lk, N, Dh, dtype, mask_valid=None, strided=False, seed=0, form="mask"):
    gen = torch.Generator(device=device).manual_seed(seed)
    if strided:
        assert Lq == Lk
        qkv = torch.randn(B, Lq, 3, N, Dh, generator=gen, device=device, dtype=dtype)
        q, k, v = qkv.unbind(2)  # (B, L, N, Dh) views of a fused projection
    else:
        q = torch.randn(B, Lq, N, Dh, generator=gen, device=device, dtype=dtype)
        k, v = (torch.randn(B, Lk, N, Dh, generator=gen, device=device, dtype=dtype) for _ in range(2))
    mask = None if mask_valid is None else padding_mask(B, Lk, min(256, Lk), mask_valid, device)
    if form == "lens" and mask is not None:  # the same padding as valid lengths (the transformer's form)
        ours = kernels.attention(q, k, v, kv_lens=mask.sum(1, dtype=torch.int32), backend="triton")
    else:
        ours = kernels.attention(q, k, v, kv_mask=mask, backend="triton")
    ref = fp32_attention(q, k, v, mask)
    lowp = reference.attention(q, k, v, kv_mask=mask)  # torch's SDPA in the input dtype
    err, err_lowp = rel_l2(ours, ref), rel_l2(lowp, ref)
    ok = bool(err < TOL[dtype] and not ours.isnan().any())
    result = dict(B=B, Lq=Lq, Lk=Lk, N=N, Dh=Dh, dtype=str(dtype), mask=mask_valid, form=form, strided=strided,
                  err=err, err_torch_lowp=err_lowp, within_2x_torch=bool(err <= 2 * err_lowp + 1e-6), ok=ok)
    log(f"  attention B{B} Lq{Lq} Lk{Lk} N{N} Dh{Dh} {dtype} {form}={mask_valid} strided={strided}: "
        f"err {err:.2e} (torch low-precision {err_lowp:.2e}) {'ok' if ok else 'FAIL'}")
    return result


def rope_case(device, B, L, N, Dh, dtype, n_rope, fused=True, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn(B, L, 3, N, Dh, generator=gen, device=device, dtype=dtype)
    x = qkv[:, :, 1]  # (B, L, N, Dh), strided like the transformer's k
    weight = (1 + 0.3 * torch.randn(Dh, generator=gen, device=device)).to(dtype)
    n = L if n_rope is None else n_rope
    angles = torch.rand(n, Dh // 2, generator=gen, device=device).repeat_interleave(2, dim=-1) * 6.3  # (n, Dh)
    cos, sin = angles.cos(), angles.sin()
    before = x.clone()
    if fused:
        ours = kernels.rms_norm_rope(x, weight, cos, sin, eps=1e-6, n_rope=n_rope, backend="triton")
        ref = reference.rms_norm_rope(x.double(), weight.double(), cos.double(), sin.double(), 1e-6, n_rope=n_rope)
    else:
        ours = kernels.apply_rope(x, cos, sin, backend="triton")
        ref = reference.apply_rope(x.double(), cos.double(), sin.double())
    err = rel_l2(ours, ref)
    ok = bool(err < TOL[dtype] and not ours.isnan().any() and torch.equal(x, before))
    log(f"  {'rms_norm_rope' if fused else 'apply_rope'} B{B} L{L} N{N} Dh{Dh} {dtype} n_rope={n_rope}: "
        f"err {err:.2e} {'ok' if ok else 'FAIL'}")
    return dict(op="rms_norm_rope" if fused else "apply_rope", B=B, L=L, N=N, Dh=Dh, dtype=str(dtype),
                n_rope=n_rope, err=err, ok=ok)


def raw_attention(module, q, k, v, tile, smoke, mask=None, lens=None):
    """The attention kernel launched with one fixed tile (no autotuning); same arguments as attention_fwd."""
    import triton

    block_m, block_n, warps, stages = tile
    if smoke:  # the interpreter runs the raw jit function; warps and stages mean nothing there
        block_m, block_n = 32, 16
    B, Lq, N, Dh = q.shape
    out = torch.full_like(q, float("nan"))
    extra = {} if smoke else dict(num_warps=warps, num_stages=stages)
    module._attn_fwd_kernel[(triton.cdiv(Lq, block_m), B * N)](
        q, k, v, q if mask is None else mask, q if lens is None else lens, out, *q.stride(), *k.stride(),
        *v.stride(), *((mask.stride(0), mask.stride(1)) if mask is not None else (0, 0)), *out.stride(),
        N, Lq, k.shape[1], Dh**-0.5 * module.LOG2E, 1, 1,
        HEAD_DIM=Dh, HAS_MASK=mask is not None, HAS_LENS=lens is not None, IEEE=False,
        UPCAST=smoke and q.dtype == torch.bfloat16, BLOCK_M=block_m, BLOCK_N=block_n, **extra,
    )
    return out


def transformer_inputs(config, B, T, H, W, text_lens, device, dtype, seed=0):
    """One inverted anti-drifting section with the full 1x / 2x / 4x history and text padded to 256."""
    from framepack_native.sections import section_frame_indices

    gen = torch.Generator(device=device).manual_seed(seed)
    lat, clean, h2, h4 = section_frame_indices("inverted_anti_drifting", T, 1)
    C, Lt = config.in_channels, 256

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    text_mask = torch.arange(Lt, device=device)[None] < torch.tensor(text_lens, device=device)[:, None]  # (B, Lt)
    return dict(
        hidden_states=rand(B, C, T, H, W), timestep=torch.linspace(900, 100, B, device=device),
        encoder_hidden_states=rand(B, Lt, config.text_embed_dim), encoder_attention_mask=text_mask.long(),
        pooled_projections=rand(B, config.pooled_projection_dim), image_embeds=rand(B, 729, config.image_proj_dim),
        indices_latents=lat, guidance=torch.full((B,), 10000.0, device=device, dtype=dtype),
        latents_clean=rand(B, C, len(clean), H, W), indices_latents_clean=clean,
        latents_history_2x=rand(B, C, len(h2), H, W), indices_latents_history_2x=h2,
        latents_history_4x=rand(B, C, len(h4), H, W), indices_latents_history_4x=h4,
    )
