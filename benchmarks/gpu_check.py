"""One run on a GPU machine: the copy / matmul ceilings, Triton kernel correctness at FramePack's real shapes,
benchmarks/attention.py and benchmarks/rope.py, host launch overhead, the transformer vs diffusers at real
widths (when diffusers imports), an attention tile sweep, the attention dispatcher's table (written to
$OUT/attention_table.json: copy it to kernels/) and its choice, the transformer's triton vs torch path, streamed
blocks with and without prefetch against the resident model (640 x 640), and torch.compile with backend auto. Results go to $OUT (about 2.5 minutes on an H200).

    python benchmarks/gpu_check.py                                  # device machine: $OUT/gpu_check.{json,log}
    python benchmarks/gpu_check.py --only "attention tile"          # only the steps whose names start so
    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --smoke       # CPU, Triton's interpreter, toy shapes

Correctness: rel. L2 error against a float32 reference (SDPA's efficient backend / kernels.reference on fp32
copies), with the issue's tolerances; the error of torch's own low-precision SDPA is printed beside it
(flash-attention's rule: ours <= 2x that). Every step is fenced, so one failure does not hide the rest, and the
files are rewritten after each step, so a run cut short still returns what it measured.
"""
import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kernels  # noqa: E402
from benchmarks import attention as attention_bench  # noqa: E402
from benchmarks.common import median_times  # noqa: E402
from benchmarks import rope as rope_bench  # noqa: E402
from benchmarks.gpu_common import (ONLY, REPORT, attention_case, fp32_attention, log, padding_mask,  # noqa: E402
                                    raw_attention, rel_l2, rope_case, save, step, transformer_inputs)
from kernels import reference  # noqa: E402

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    p.add_argument("--smoke", action="store_true", help="CPU + TRITON_INTERPRET=1, toy shapes: checks the script")
    p.add_argument("--budget-s", type=float, default=420, help="skip benchmark lengths once this much has passed")
    p.add_argument("--only", nargs="+", default=[], help="run only the steps whose names start with these")
    args = p.parse_args()
    ONLY.extend(args.only)
    out_dir, t0 = Path(args.out), time.perf_counter()
    from kernels import triton_util

    if args.smoke != (not torch.cuda.is_available()) or args.smoke != triton_util.INTERPRET:
        sys.exit("run on a CUDA machine without TRITON_INTERPRET, or with --smoke and TRITON_INTERPRET=1 on the CPU")
    device = torch.device("cpu" if args.smoke else "cuda")
    import triton

    REPORT["env"] = dict(
        device=torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        capability=list(torch.cuda.get_device_capability()) if device.type == "cuda" else None,
        torch=torch.__version__, triton=triton.__version__, date=time.strftime("%Y-%m-%d"), smoke=args.smoke,
    )
    log(json.dumps(REPORT["env"]))
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32

    @step("ceilings: copy bandwidth and bf16 matmul", out_dir)
    def _():
        n, size = (1 << 20, 256) if args.smoke else (1 << 30, 8192)  # 2 GiB of bf16 copied; 8192^3 product
        src = torch.randn(n, device=device, dtype=bf16)
        dst = torch.empty_like(src)
        a, b = (torch.randn(size, size, device=device, dtype=bf16) for _ in range(2))
        med = median_times({"copy": lambda: dst.copy_(src), "matmul": lambda: a @ b}, device,
                                           runs=5, inner=5)
        result = dict(copy_gbps=4 * n / med["copy"] / 1e9, matmul_tflops=2 * size**3 / med["matmul"] / 1e12)
        log(f"  copy {result['copy_gbps']:.0f} GB/s (read + write), bf16 matmul {result['matmul_tflops']:.0f} TFLOP/s")
        return result

    # Real shapes: B=1, 24 heads x 128, 4k-30k tokens; smoke: the same code paths at toy sizes.
    if args.smoke:
        long, mid, N, text_lens, T, HW, real_layers = 97, 64, 2, [40, 9], 1, 8, (1, 1)
    else:
        long, mid, N, text_lens, T, HW, real_layers = 30000, 4352, 24, [200, 17], 9, 48, (1, 1)

    @step("attention correctness", out_dir)
    def _():
        cases = [
            dict(B=1, Lq=mid, Lk=mid, N=N, Dh=128, dtype=bf16),
            dict(B=1, Lq=long, Lk=long, N=N, Dh=128, dtype=bf16),
            dict(B=1, Lq=long, Lk=long, N=N, Dh=128, dtype=bf16, mask_valid=[text_lens[0]]),
            dict(B=2, Lq=mid, Lk=mid, N=N, Dh=128, dtype=bf16, mask_valid=text_lens),
            dict(B=2, Lq=257, Lk=257, N=N, Dh=128, dtype=bf16, mask_valid=text_lens),  # token refiner
            dict(B=1, Lq=mid + 3, Lk=mid // 3 + 1, N=N, Dh=128, dtype=bf16),
            dict(B=1, Lq=mid, Lk=mid, N=N, Dh=128, dtype=bf16, strided=True),
            dict(B=1, Lq=mid, Lk=mid, N=N, Dh=128, dtype=fp16, mask_valid=[text_lens[1]]),
            dict(B=1, Lq=mid, Lk=mid, N=N, Dh=128, dtype=fp32),
            dict(B=1, Lq=mid, Lk=mid, N=N, Dh=64, dtype=bf16, mask_valid=[text_lens[1]]),
            dict(B=1, Lq=long, Lk=long, N=N, Dh=128, dtype=bf16, mask_valid=[text_lens[0]], form="lens"),
            dict(B=2, Lq=mid, Lk=mid, N=N, Dh=128, dtype=bf16, mask_valid=text_lens, form="lens"),
            dict(B=2, Lq=257, Lk=257, N=N, Dh=128, dtype=bf16, mask_valid=[0, 17], form="lens"),  # an empty row
            dict(B=2, Lq=mid, Lk=mid, N=N, Dh=64, dtype=fp16, mask_valid=text_lens, form="lens"),
            dict(B=2, Lq=mid, Lk=mid, N=N, Dh=128, dtype=fp32, mask_valid=text_lens, form="lens"),
        ]
        results = [attention_case(device, seed=i, **case) for i, case in enumerate(cases)]
        assert all(r["ok"] for r in results), "some attention case failed"
        return results

    @step("rms_norm_rope correctness", out_dir)
    def _():
        cases = [
            dict(B=1, L=long, N=N, Dh=128, dtype=bf16, n_rope=long - 256 if not args.smoke else long - 20),
            dict(B=2, L=mid + 1, N=N, Dh=128, dtype=fp16, n_rope=None),
            dict(B=1, L=mid, N=N, Dh=128, dtype=fp32, n_rope=mid // 2),
            dict(B=1, L=mid, N=N, Dh=64, dtype=bf16, n_rope=0),
            dict(B=1, L=mid, N=N, Dh=128, dtype=bf16, n_rope=None, fused=False),
        ]
        results = [rope_case(device, seed=i, **case) for i, case in enumerate(cases)]
        assert all(r["ok"] for r in results), "some rope case failed"
        return results

    lengths = [64, 97] if args.smoke else [4096, 8192, 16384, 30000]

    @step("benchmark attention (bf16, 24 x 128)", out_dir)
    def _():
        rows = []
        for L in lengths:
            if time.perf_counter() - t0 > args.budget_s:
                log(f"  budget of {args.budget_s} s spent: skipping L={L}")
                continue
            rows += attention_bench.bench([L], heads=N, device=device, pad=min(200, L // 4),
                                          runs=3 if args.smoke else 7, inner=1 if args.smoke else 3)
        if device.type == "cuda":  # this device's row of kernels/dispatch.py's table: copy it into kernels/
            entries = attention_bench.table_entries(rows, torch.cuda.get_device_name(), bf16, 128)
            attention_bench.write_table(out_dir / "attention_table.json", entries)
            log(f"  wrote {len(entries)} table entries to {out_dir / 'attention_table.json'}")
        return rows

    @step("attention dispatch: the measured table's choice is exact", out_dir)
    def _():
        from kernels import dispatch
        table_path = out_dir / "attention_table.json"
        if table_path.exists():  # the table the benchmark step just measured, as kernels.attention reads it
            os.environ[dispatch.TABLE_ENV] = str(table_path)
        table = dispatch.load_table()
        results = []
        with torch.inference_mode():
            for L in lengths[:3]:
                gen = torch.Generator(device=device).manual_seed(L)
                dt = bf16 if device.type == "cuda" else fp32
                q, k, v = (torch.randn(1, L, N, 128, generator=gen, device=device, dtype=dt) for _ in range(3))
                chosen = dispatch.attention_backend_for(q, k, v, table=table)
                out = kernels.attention(q, k, v)  # "auto": what the table chose
                err = rel_l2(out, fp32_attention(q, k, v, None))
                results.append(dict(L=L, chosen=chosen, err_vs_fp32=err))
                log(f"  L={L}: {chosen}, rel. L2 vs fp32 {err:.2e}")
        assert all(r["err_vs_fp32"] < 2e-2 for r in results)
        return results

    @step("benchmark rms_norm_rope (bf16, 24 x 128)", out_dir)
    def _():
        rows = []
        for L in lengths[1::2]:  # torch.compile recompiles per length: two lengths
            if time.perf_counter() - t0 > args.budget_s + 60:
                log(f"  budget spent: skipping L={L}")
                continue
            rows += rope_bench.bench([L], heads=N, device=device, text=min(256, L // 4), compile=not args.smoke,
                                     runs=3 if args.smoke else 7, inner=1 if args.smoke else 10)
        return rows

    @step("host launch overhead per call (tiny inputs)", out_dir)
    def _():
        ta, tr = kernels._triton_module("triton_attention"), kernels._triton_module("triton_rope")
        q = torch.randn(1, 64, 2, 128, device=device, dtype=bf16)
        w = torch.ones(128, device=device, dtype=bf16)
        cs = torch.ones(64, 128, device=device)
        calls = {
            "kernels.attention (eager entry)": lambda: kernels.attention(q, q, q, backend="triton"),
            "attention torch.library op": lambda: ta.attention_fwd(q, q, q, None, None, 0.1),
            "attention eager twin": lambda: ta.attention_fwd_eager(q, q, q, None, None, 0.1),
            "sdpa": lambda: reference.attention(q, q, q),
            "kernels.rms_norm_rope (eager entry)": lambda: kernels.rms_norm_rope(q, w, cs, cs, eps=1e-6,
                                                                                 backend="triton"),
            "rms_norm_rope torch.library op": lambda: tr.rms_norm_rope_fwd(q, w, cs, cs, 1e-6, 64),
            "rms_norm_rope eager twin": lambda: tr.rms_norm_rope_fwd_eager(q, w, cs, cs, 1e-6, 64),
            "torch rms_norm_rope (eager, ~10 ops)": lambda: reference.rms_norm_rope(q, w, cs, cs, 1e-6),
        }
        result = {}
        with torch.inference_mode():
            for name, fn in calls.items():
                for _ in range(20):
                    fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                n = 50 if args.smoke else 500
                start = time.perf_counter()
                for _ in range(n):
                    fn()
                host = (time.perf_counter() - start) / n
                if device.type == "cuda":
                    torch.cuda.synchronize()
                result[name] = host * 1e6
                log(f"  {name}: {host * 1e6:.1f} us of host time per call")
        return result

    @step("transformer vs diffusers (real widths, 2 dual + 2 single, bf16)", out_dir)
    def _():
        try:
            import diffusers  # noqa: F401
        except ImportError:
            return {"skipped": "diffusers is not installed"}
        from benchmarks import transformer as transformer_bench

        sizes = [] if args.smoke else ["--height", "80", "--width", "80"]  # 640x640 frames
        common = ["--device", device.type, "--dtype", "bf16", "--config", "real", "--blocks", "2", "2",
                  "--runs", "5", *sizes]
        if args.smoke:
            common = ["--device", "cpu", "--dtype", "fp32", "--window", "1", "--height", "8", "--width", "8",
                      "--runs", "1", "--blocks", "1", "1"]
        results = {}
        for label, extra in (("batch 1", []),
                             ("batch 2, text 200 / 17 valid", ["--batch", "2", "--text-valid", "200", "17"])):
            if time.perf_counter() - t0 > args.budget_s + 60:
                log(f"  budget spent: skipping {label}")
                continue
            bench_args = transformer_bench.parser().parse_args(common + extra)
            result = transformer_bench.compare(bench_args, backends=("torch", "triton"))
            result["config"] = {k: v for k, v in result["config"].items() if not isinstance(v, tuple)}
            result["ratio_diffusers_over"] = {n: result["ms"]["diffusers"] / ms for n, ms in result["ms"].items()}
            log(f"  {label}: {result}")
            results[label] = result
        return results

    @step("attention tile sweep (bf16, Dh 128, L 16384)", out_dir)
    def _():
        module = kernels._triton_module("triton_attention")
        L, heads, head_dim = (97 if args.smoke else 16384), N, 128
        gen = torch.Generator(device=device).manual_seed(head_dim)
        q, k, v = (torch.randn(1, L, heads, head_dim, generator=gen, device=device, dtype=bf16) for _ in range(3))
        mask = padding_mask(1, L, min(256, L // 4), [min(200, L // 8)], device)
        variants = (("none", {}), ("mask", {"mask": mask}), ("lens", {"lens": mask.sum(1, dtype=torch.int32)}))
        flops = 4 * heads * L * L * head_dim
        rows = []
        for tile in [(128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 8, 4)]:
            if time.perf_counter() - t0 > args.budget_s + 120:
                log("  budget spent: sweep stopped")
                return rows
            for form, kw in variants:
                row = dict(Dh=head_dim, tile=tile, form=form)
                try:  # a variant that does not compile or fit is a result too
                    fn = functools.partial(raw_attention, module, q, k, v, tile, args.smoke, **kw)
                    row["err"] = rel_l2(fn(), fp32_attention(q, k, v, None if form == "none" else mask))
                    t = median_times({form: fn}, device, runs=3 if args.smoke else 5,
                                                     inner=1 if args.smoke else 3)[form]
                    row.update(ms=t * 1e3, tflops=flops / t / 1e12)
                except Exception as exc:  # noqa: BLE001
                    row["error"] = str(exc).splitlines()[0][:300] if str(exc) else repr(exc)
                rows.append(row)
                log(f"  {row}")
        return rows

    @step("transformer: triton vs torch path", out_dir)
    def _():
        from framepack_native.models.transformer import FramePackTransformer, FramePackTransformerConfig

        fields = dict(num_layers=real_layers[0], num_single_layers=real_layers[1])
        if args.smoke:
            fields.update(num_attention_heads=2, attention_head_dim=64, rope_axes_dim=(16, 24, 24),
                          text_embed_dim=32, pooled_projection_dim=12, image_proj_dim=20)
        config = FramePackTransformerConfig(**fields)
        torch.manual_seed(0)
        with torch.device(device):
            model = FramePackTransformer(config).eval()
        inputs = transformer_inputs(config, 2, T, HW, HW, text_lens, device, fp32)
        def forward(backend):
            model.kernel_backend = backend
            return model(**inputs)

        results = {"config": str(fields)}
        with torch.inference_mode():
            expected = forward("torch")  # float32, torch path: the oracle
            model.to(bf16)
            inputs = {k: v.to(bf16) if v.is_floating_point() and k != "timestep" else v for k, v in inputs.items()}
            for backend in ("torch", "triton"):
                results[f"err_{backend}_bf16_vs_fp32"] = rel_l2(forward(backend), expected)
            if not args.smoke:  # the interpreter takes a minute a forward: no timing there
                med = median_times({b: functools.partial(forward, b) for b in ("torch", "triton")},
                                                   device, runs=5, inner=1)
                results.update({f"ms_{b}_bf16": t * 1e3 for b, t in med.items()})
        log(f"  {results}")
        assert results["err_triton_bf16_vs_fp32"] < max(2 * results["err_torch_bf16_vs_fp32"], 2e-2)
        return results

    @step("offload: streamed blocks with and without prefetch vs resident", out_dir)
    def _():
        from framepack_native.models.transformer import FramePackTransformer, FramePackTransformerConfig
        from framepack_native.offload import streamed_blocks

        fields = dict(num_layers=4 if not args.smoke else 1, num_single_layers=8 if not args.smoke else 1)
        if args.smoke:
            fields.update(num_attention_heads=2, attention_head_dim=64, rope_axes_dim=(16, 24, 24),
                          text_embed_dim=32, pooled_projection_dim=12, image_proj_dim=20)
        config = FramePackTransformerConfig(**fields)
        torch.manual_seed(0)
        model = FramePackTransformer(config).eval().to(bf16)
        hw = 8 if args.smoke else 80  # 640 x 640 pixels: 80 x 80 latents
        inputs = transformer_inputs(config, 1, T, hw, hw, text_lens[:1], device, bf16)
        results = {"config": str(fields), "latent_hw": hw, "window": T}
        with torch.inference_mode():
            def streamed(prefetch):
                def run():
                    with streamed_blocks(model, device, prefetch=prefetch):
                        return model(**inputs)
                return run
            outs = {"no prefetch": streamed(False)(), "prefetch": streamed(None)()}
            model.to(device)
            outs["resident"] = model(**inputs)
            results["prefetch_equals_resident"] = bool(torch.equal(outs["prefetch"], outs["resident"]))
            results["no_prefetch_equals_resident"] = bool(torch.equal(outs["no prefetch"], outs["resident"]))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                med = median_times({"resident": lambda: model(**inputs)}, device, runs=5, inner=1)
                model.to("cpu")
                for name, prefetch in (("streamed", False), ("streamed + prefetch", None)):
                    med.update(median_times({name: streamed(prefetch)}, device, runs=5, inner=1))
                results.update({f"ms {k}": v * 1e3 for k, v in med.items()})
                results["prefetch over resident"] = med["streamed + prefetch"] / med["resident"]
                results["no prefetch over resident"] = med["streamed"] / med["resident"]
        log(f"  {results}")
        assert results["prefetch_equals_resident"] and results["no_prefetch_equals_resident"]
        return results

    @step("torch.compile: backend auto leaves attention and RoPE to inductor", out_dir)
    def _():
        B, L, n_rope = 2, mid, mid - 256 if not args.smoke else mid - 20
        gen = torch.Generator(device=device).manual_seed(7)
        q, k, v = (torch.randn(B, L, N, 128, generator=gen, device=device, dtype=bf16) for _ in range(3))
        wq, wk = (torch.randn(128, generator=gen, device=device, dtype=bf16) for _ in range(2))
        angles = torch.rand(n_rope, 64, generator=gen, device=device).repeat_interleave(2, dim=-1)
        cos, sin = angles.cos(), angles.sin()
        lens = padding_mask(B, L, 256 if not args.smoke else 40, text_lens, device).sum(1, dtype=torch.int32)

        def attend(backend):
            def fn(q, k, v, wq, wk, cos, sin, lens):
                q = kernels.rms_norm_rope(q, wq, cos, sin, eps=1e-6, n_rope=n_rope, backend=backend)
                k = kernels.rms_norm_rope(k, wk, cos, sin, eps=1e-6, n_rope=n_rope, backend=backend)
                return kernels.attention(q, k, v, kv_lens=lens, backend=backend)
            return fn

        result = {}
        with torch.inference_mode():
            eager = attend("triton")(q, k, v, wq, wk, cos, sin, lens)
            if args.smoke:  # the interpreter launches raw kernels; there is nothing for dynamo to trace
                return {"skipped": "smoke"}
            for backend in ("auto", "triton"):
                torch._dynamo.reset()
                try:
                    compiled = torch.compile(attend(backend), fullgraph=True)(q, k, v, wq, wk, cos, sin, lens)
                    result[backend] = dict(err_vs_eager_triton=rel_l2(compiled, eager))
                except Exception as err:  # noqa: BLE001 - the forced Triton path is recorded, not required
                    result[backend] = dict(error=str(err).splitlines()[0][:300])
                log(f"  torch.compile(fullgraph=True), backend={backend}: {result[backend]}")
        assert result["auto"].get("err_vs_eager_triton", 1) < 2e-2, "torch.compile with backend auto failed"
        return result

    # The configs the autotuner picked, per key (HEAD_DIM, HAS_MASK, length buckets, dtypes): for tuning TILES.
    tuned = {"attention": kernels._triton_module("triton_attention")._attn_fwd_tuned,
             "rms_norm_rope": kernels._triton_module("triton_rope")._rms_norm_rope_tuned}
    REPORT["autotune"] = {op: {str(k): str(v) for k, v in t.cache.items()} for op, t in tuned.items()}
    log(json.dumps(REPORT["autotune"], indent=1))
    failed = [name for name, s in REPORT["steps"].items() if not s["ok"]]
    log(f"done in {time.perf_counter() - t0:.0f} s; failed steps: {failed or 'none'}")
    save(out_dir)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
