"""kernels: dispatch and input validation here; the Triton kernels in Triton's interpreter in a child process.

The interpreter needs TRITON_INTERPRET=1 before triton is first imported, so tests/kernels_interp/ runs in its
own `python -m pytest` process and this process (the rest of the suite) never sees the variable.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels import reference

ROOT = Path(__file__).resolve().parent.parent
INTERP_TESTS = ["tests/kernels_interp/interp_kernels.py"]


def test_triton_kernels_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("FRAMEPACK_KERNELS", None)
    cmd = [sys.executable, "-m", "pytest", *INTERP_TESTS, "-q", "-p", "no:cacheprovider", "--durations=5"]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]


def inputs(seed=0, B=2, L=11, N=3, Dh=64, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, N, Dh, generator=gen, dtype=dtype)
    angles = torch.rand(L, Dh // 2, generator=gen).repeat_interleave(2, dim=-1)  # (L, Dh)
    return x, torch.randn(Dh, generator=gen), angles.cos(), angles.sin()


@pytest.mark.parametrize("env", [None, "torch", "auto"])
def test_auto_on_cpu_is_the_torch_reference(monkeypatch, env):
    if env is None:
        monkeypatch.delenv("FRAMEPACK_KERNELS", raising=False)
    else:
        monkeypatch.setenv("FRAMEPACK_KERNELS", env)
    x, w, cos, sin = inputs()
    mask = torch.arange(11)[None, :] < torch.tensor([[11], [6]])  # (B, Lk)
    for backend in ("auto", "torch"):
        assert torch.equal(kernels.attention(x, x, x, kv_mask=mask, backend=backend),
                           reference.attention(x, x, x, kv_mask=mask))
        assert torch.equal(kernels.apply_rope(x, cos, sin, backend=backend), reference.apply_rope(x, cos, sin))
        assert torch.equal(kernels.rms_norm_rope(x, w, cos[:7], sin[:7], eps=1e-6, n_rope=7, backend=backend),
                           reference.rms_norm_rope(x, w, cos[:7], sin[:7], 1e-6, n_rope=7))


def test_auto_leaves_cuda_tensors_to_torch_while_torch_compile_traces(monkeypatch):
    class CudaLike:  # what _use_triton reads of a tensor
        device, requires_grad = torch.device("cuda"), False

    monkeypatch.delenv("FRAMEPACK_KERNELS", raising=False)
    for compiling in (False, True):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
        assert kernels._use_triton("auto", "triton_rope", (CudaLike(),), lambda module: None) is not compiling
        module = kernels._triton_module("triton_attention")
        expected = module.attention_fwd if compiling else module.attention_fwd_eager
        assert kernels._entry("triton_attention", "attention_fwd") is expected


def test_unknown_backend_and_environment_value_raise(monkeypatch):
    x, w, cos, sin = inputs()
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'"):
        kernels.attention(x, x, x, backend="cuda")
    monkeypatch.setenv("FRAMEPACK_KERNELS", "fast")
    with pytest.raises(ValueError, match="FRAMEPACK_KERNELS='fast'"):
        kernels.apply_rope(x, cos, sin)


def test_forced_triton_on_cpu_raises_outside_the_interpreter(monkeypatch):
    x, w, cos, sin = inputs()
    for name in ("triton_attention", "triton_rope"):
        monkeypatch.setattr(kernels._triton_module(name), "INTERPRET", False)
    calls = {
        "attention": lambda: kernels.attention(x, x, x, backend="triton"),
        "apply_rope": lambda: kernels.apply_rope(x, cos, sin, backend="triton"),
        "rms_norm_rope": lambda: kernels.rms_norm_rope(x, w, cos, sin, eps=1e-6, backend="triton"),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match="needs CUDA tensors, got cpu tensors"):
            call()


def test_without_triton_forced_raises_and_auto_stays_on_torch(monkeypatch):
    monkeypatch.setitem(kernels._modules, "triton_attention", ImportError("No module named 'triton'"))
    x, _, _, _ = inputs()
    with pytest.raises(RuntimeError, match=r"Triton kernels do not import \(No module named 'triton'\)"):
        kernels.attention(x, x, x, backend="triton")
    assert torch.equal(kernels.attention(x, x, x), reference.attention(x, x, x))


def test_forced_triton_names_what_the_kernel_cannot_take(monkeypatch):
    monkeypatch.setattr(kernels._triton_module("triton_attention"), "INTERPRET", True)
    x = torch.randn(1, 5, 2, 72)
    with pytest.raises(ValueError, match=r"head dims \(64, 128\), got 72"):
        kernels.attention(x, x, x, backend="triton")
    x = torch.randn(1, 5, 2, 64, dtype=torch.float64)
    with pytest.raises(ValueError, match="got torch.float64"):
        kernels.attention(x, x, x, backend="triton")
    x = torch.randn(1, 5, 2, 64, requires_grad=True)
    with pytest.raises(RuntimeError, match="forward-only"):
        kernels.attention(x, x, x, backend="triton")


def test_attention_validates_shapes():
    q = torch.randn(2, 5, 3, 64)
    kv = torch.randn(2, 7, 3, 64)
    with pytest.raises(ValueError, match=r"shapes disagree: q \(2, 5, 3, 64\), k \(2, 7, 3, 32\)"):
        kernels.attention(q, kv[..., :32], kv[..., :32])
    with pytest.raises(ValueError, match=r"\(B, L, N, Dh\)"):
        kernels.attention(q[0], kv, kv)
    with pytest.raises(ValueError, match="at least one key"):
        kernels.attention(q, kv[:, :0], kv[:, :0])
    with pytest.raises(ValueError, match="dtypes disagree"):
        kernels.attention(q, kv.half(), kv.half())
    with pytest.raises(ValueError, match=r"kv_mask must be bool \(B, Lk\) = \(2, 7\); got torch.bool \(2, 5\)"):
        kernels.attention(q, kv, kv, kv_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="got torch.float32"):
        kernels.attention(q, kv, kv, kv_mask=torch.ones(2, 7))
    with pytest.raises(ValueError, match="not both"):
        kernels.attention(q, kv, kv, kv_mask=torch.ones(2, 7, dtype=torch.bool), kv_lens=torch.tensor([7, 7]))
    with pytest.raises(ValueError, match=r"kv_lens must be int32/int64 \(B,\) = \(2,\); got torch.float32 \(2,\)"):
        kernels.attention(q, kv, kv, kv_lens=torch.tensor([7.0, 7.0]))
    with pytest.raises(ValueError, match=r"got torch.int64 \(3,\)"):
        kernels.attention(q, kv, kv, kv_lens=torch.tensor([7, 7, 7]))


def test_kv_lens_on_the_torch_path_is_a_prefix_mask():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, L, 2, 64, generator=gen, dtype=torch.float64) for L in (5, 9, 9))
    lens = torch.tensor([9, 4, 0], dtype=torch.int32)  # all keys, a prefix, none
    out = kernels.attention(q, k, v, kv_lens=lens, backend="torch")
    # Out-of-range values clamp to [0, Lk], as the kernel's do.
    clamped = kernels.attention(q, k, v, kv_lens=torch.tensor([2**40, 4, -3]), backend="torch")
    torch.testing.assert_close(clamped, out, rtol=0, atol=0)
    for b, n in enumerate(lens.tolist()):
        if n == 0:
            assert out[b].eq(0).all()  # no key to attend: 0, as the kernel's contract says
            continue
        scores = torch.einsum("qhd,khd->hqk", q[b], k[b, :n]) / 8.0  # scale 1/sqrt(64)
        expected = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[b, :n])
        torch.testing.assert_close(out[b], expected)


def test_rope_validates_shapes():
    x, w, cos, sin = inputs()
    with pytest.raises(ValueError, match=r"cos/sin must be \(11, 64\); got cos \(7, 64\)"):
        kernels.apply_rope(x, cos[:7], sin[:7])
    with pytest.raises(ValueError, match=r"cos/sin must be \(5, 64\)"):
        kernels.rms_norm_rope(x, w, cos, sin, eps=1e-6, n_rope=5)
    with pytest.raises(ValueError, match=r"n_rope must be within \[0, L\] = \[0, 11\]; got 12"):
        kernels.rms_norm_rope(x, w, cos, sin, eps=1e-6, n_rope=12)
    with pytest.raises(ValueError, match=r"weight must be \(64,\); got \(32,\)"):
        kernels.rms_norm_rope(x, w[:32], cos, sin, eps=1e-6)
    with pytest.raises(ValueError, match="Dh even"):
        kernels.apply_rope(x[..., :63], cos[:, :63], sin[:, :63])


def test_attention_autotune_keeps_configs_that_suit_the_shape_and_chip(monkeypatch):
    ta = kernels._triton_module("triton_attention")

    def kept(budget, dtype, head_dim, lq):
        monkeypatch.setattr(ta, "shared_memory_bytes", lambda device: budget)
        configs = ta._prune(ta.CONFIGS, {"Q": torch.empty(1, dtype=dtype), "Lq": lq}, HEAD_DIM=head_dim)
        return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in configs}

    h100, a100, rtx = 227 * 1024, 163 * 1024, 99 * 1024
    assert kept(h100, torch.bfloat16, 128, 4096) == {(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 3),
                                                     (64, 64, 4, 2)}
    assert kept(h100, torch.bfloat16, 64, 4096) == {(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 2)}
    assert kept(a100, torch.bfloat16, 128, 4096) == {(128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 2)}  # no 128x128
    assert kept(a100, torch.bfloat16, 128, 40) == {(64, 64, 4, 2)}  # short queries: 64 rows
    assert kept(rtx, torch.bfloat16, 128, 4096) == {(64, 64, 4, 2)}
    assert kept(rtx, torch.float32, 128, 4096) == {(64, 64, 4, 2)}  # nothing fits: the last config


def compile_for(arch, kernel, pointers, constants, num_warps, num_stages):
    """Compile a Triton kernel ahead of time for sm_<arch> (ptxas ships with triton: no GPU needed).

    pointers: {arg: "*bf16" ...}; other non-constexpr args are i32 (qk_scale / eps fp32); pointers and strides
    are declared 16-aligned, as the JIT specialises them for real tensors.
    """
    import triton
    from triton.backends.compiler import GPUTarget

    types = {"qk_scale": "fp32", "eps": "fp32", **pointers}
    signature = {a: "constexpr" if a in constants else types.get(a, "i32") for a in kernel.arg_names}
    aligned = [a for a in kernel.arg_names if a not in constants and (a in pointers or a.startswith("stride"))]
    attrs = {(kernel.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    target = GPUTarget("cuda", arch, 32)
    options = triton.compiler.make_backend(target).parse_options({"num_warps": num_warps, "num_stages": num_stages})
    source = triton.compiler.ASTSource(kernel, signature, constants, attrs)
    return triton.compile(source, target=target, options=options.__dict__)


# Opt-in shared memory per block: H100/H200 (sm_90) and A100 (sm_80).
SHARED_MEMORY = {90: 227 * 1024, 80: 163 * 1024}


@pytest.mark.parametrize("arch", [90, 80])
def test_kernels_compile_for_hopper_and_ampere(arch):
    """Every autotune config of the GPU path compiles (bf16, key mask) and fits the chip's shared memory."""
    ta = kernels._triton_module("triton_attention")
    tr = kernels._triton_module("triton_rope")
    assert not ta.INTERPRET, "this test compiles for a GPU; run it without TRITON_INTERPRET"
    unit = dict(stride_qd=1, stride_kd=1, stride_vd=1, stride_od=1, stride_ml=1)
    compiled = 0
    for config in ta.CONFIGS:
        m, n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
        for head_dim in ta.TILES[(m, n, config.num_warps, config.num_stages)]:
            if arch == 80 and head_dim == 64:
                continue  # keeps the test short; sm_90 covers the Dh = 64 configs
            constants = dict(unit, HEAD_DIM=head_dim, HAS_MASK=True, HAS_LENS=True, IEEE=False, UPCAST=False,
                             BLOCK_M=m, BLOCK_N=n)
            pointers = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "MASK": "*i1", "LENS": "*i32", "Out": "*bf16"}
            binary = compile_for(arch, ta._attn_fwd_kernel, pointers, constants, config.num_warps, config.num_stages)
            smem = (m + 2 * n * config.num_stages) * head_dim * 2
            assert binary.metadata.shared <= min(smem, SHARED_MEMORY[arch]), (config, head_dim, binary.metadata.shared)
            compiled += 1
    # The transformer's form: lengths (int64 here), no mask.
    constants = dict(unit, HEAD_DIM=128, HAS_MASK=False, HAS_LENS=True, IEEE=False, UPCAST=False, BLOCK_M=128,
                     BLOCK_N=64)
    pointers = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "MASK": "*bf16", "LENS": "*i64", "Out": "*bf16"}
    compile_for(arch, ta._attn_fwd_kernel, pointers, constants, 8, 3)
    for config in tr.CONFIGS[:2 if arch == 80 else None]:
        constants = dict(stride_xd=1, stride_od=1, stride_w=1, stride_cd=1, stride_sd=1, HEAD_DIM=128, HEADS=32,
                         HAS_NORM=True, HAS_ROPE=True, BLOCK_T=config.kwargs["BLOCK_T"])
        pointers = {"X": "*bf16", "W": "*bf16", "COS": "*fp32", "SIN": "*fp32", "Out": "*bf16"}
        compile_for(arch, tr._rms_norm_rope_kernel, pointers, constants, config.num_warps, config.num_stages)
        compiled += 1
    assert compiled >= 6
