"""FramePackTransformer forward vs diffusers' HunyuanVideoFramepackTransformer3DModel: same weights, inputs,
device and dtype, in one process, alternating; prints medians and the speed ratio (reference / ours).

    python benchmarks/transformer.py                        # CPU, float32, mid config
    python benchmarks/transformer.py --official --teacache-skip  # + the official app's model, a skipped step
    python benchmarks/transformer.py --device cuda --dtype bf16 --config real --blocks 2 2 --height 80 --width 80 \
        --backend torch triton [--batch 2 --text-valid 200 17]
"""
import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DTYPES, device_name, rel_l2  # noqa: E402
from framepack_native.models.loading import config_from_dict  # noqa: E402
from framepack_native.models.transformer import FramePackTransformer, FramePackTransformerConfig  # noqa: E402
from framepack_native.sections import section_frame_indices  # noqa: E402
from framepack_native.teacache import TeaCache  # noqa: E402
from weights_convert.core import convert_state  # noqa: E402
from weights_convert.transformer import CONVERTER  # noqa: E402

CONFIGS = {
    "mid": dict(num_attention_heads=8, attention_head_dim=64, num_layers=2, num_single_layers=4,
                rope_axes_dim=(16, 24, 24)),
    "real": dict(num_attention_heads=24, attention_head_dim=128, num_layers=2, num_single_layers=2,
                 rope_axes_dim=(16, 56, 56)),
}
COMMON = dict(num_refiner_layers=2, text_embed_dim=4096, pooled_projection_dim=768, image_proj_dim=1152,
              has_image_proj=True, has_clean_x_embedder=True)


def make_inputs(args, device, dtype):
    """One inverted anti-drifting section (padding 1 window) with the full 1x / 2x / 4x history, as the pipeline."""
    g = torch.Generator().manual_seed(0)
    B, T, H, W = args.batch, args.window, args.height, args.width
    lat, clean, h2, h4 = section_frame_indices("inverted_anti_drifting", T, T)
    mask = torch.zeros(B, args.text_len, dtype=torch.long)
    valid = (args.text_valid * B)[:B] if len(args.text_valid) == 1 else args.text_valid
    if len(valid) != B:
        raise SystemExit(f"--text-valid takes 1 or --batch ({B}) values, got {len(valid)}")
    for b, n in enumerate(valid):
        mask[b, :n] = 1

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    return dict(
        hidden_states=rand(B, 16, T, H, W), timestep=torch.full((B,), 937.0, device=device),
        encoder_hidden_states=rand(B, args.text_len, 4096), encoder_attention_mask=mask.to(device),
        pooled_projections=rand(B, 768), image_embeds=rand(B, 729, 1152), indices_latents=lat,
        guidance=torch.full((B,), 10000.0, device=device, dtype=dtype),
        latents_clean=rand(B, 16, 2, H, W), indices_latents_clean=clean,
        latents_history_2x=rand(B, 16, 2, H, W), indices_latents_history_2x=h2,
        latents_history_4x=rand(B, 16, 16, H, W), indices_latents_history_4x=h4,
    )


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def image_tokens(args):
    """Tokens of the noisy window plus the 1x (2 frames), 2x (2 -> 1) and 4x (16 -> 4) history after patchify."""
    H, W = args.height, args.width
    return args.window * H * W // 4 + 2 * H * W // 4 + -(-H // 4) * -(-W // 4) + 4 * -(-H // 8) * -(-W // 8)


def compare(args, backends=("auto",)):
    """Builds diffusers' model and ours with the same weights; times diffusers and ours with each kernel backend,
    alternating, args.runs times after one warm-up. Returns {"ms": {name: median}, "min_ms", "err": {name: rel. L2}}.
    """
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    config = {**CONFIGS[args.config], **COMMON}
    if args.blocks:
        config.update(num_layers=args.blocks[0], num_single_layers=args.blocks[1])
    torch.manual_seed(0)
    with torch.device(device):
        ref = HunyuanVideoFramepackTransformer3DModel(**config).to(dtype).eval()
    fields, state = convert_state(CONVERTER, ref.state_dict(), dict(ref.config))
    with torch.device("meta"):
        ours = FramePackTransformer(config_from_dict(FramePackTransformerConfig, fields))
    ours.load_state_dict(state, strict=True, assign=True)
    ours.eval()
    inputs = make_inputs(args, device, dtype)

    def ours_with(backend):
        def run():
            ours.kernel_backend = backend
            return ours(**inputs)
        return run

    run = {"diffusers": lambda: ref(**inputs, return_dict=False)[0]}
    if getattr(args, "official", False):
        # The official app's model (framepack==0.0.9) with the same weights; its batch > 1 path needs flash-attn.
        from tests.reference.official import official_forward, official_transformer_class

        with torch.device(device):
            official = official_transformer_class()(**config).to(dtype).eval()
        official.load_state_dict(ref.state_dict(), strict=True)
        run["official"] = lambda: official_forward(official, inputs)
    run.update({f"ours ({b})": ours_with(b) for b in backends})
    if getattr(args, "teacache_skip", False):
        # Its first call (the warm-up) computes and keeps the residual; every later one skips the blocks.
        cache = TeaCache(num_steps=2**62, threshold=math.inf)
        run["ours, TeaCache skip"] = lambda: ours(**inputs, teacache=cache)
    times = {name: [] for name in run}
    with torch.inference_mode():
        outs = {name: fn() for name, fn in run.items()}  # warm-up (and autotuning)
        for _ in range(args.runs):
            for name, fn in run.items():
                times[name].append(timed(fn, device)[0])
    return dict(
        config=config, tokens=image_tokens(args),
        ms={name: statistics.median(t) * 1e3 for name, t in times.items()},
        min_ms={name: min(t) * 1e3 for name, t in times.items()},
        runs_ms={name: [round(x * 1e3, 2) for x in t] for name, t in times.items()},
        err={name: rel_l2(o, outs["diffusers"]) for name, o in outs.items()},
    )


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--config", choices=CONFIGS, default="mid")
    p.add_argument("--blocks", type=int, nargs=2, metavar=("DUAL", "SINGLE"), help="override the block counts")
    p.add_argument("--window", type=int, default=9, help="latent frames of the noisy window")
    p.add_argument("--height", type=int, default=32, help="latent height")
    p.add_argument("--width", type=int, default=32, help="latent width")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-len", type=int, default=256, help="text tokens as passed (the pipeline pads to 256)")
    p.add_argument("--text-valid", type=int, nargs="+", default=[64],
                   help="valid text tokens (mask 1): one value for every prompt, or one per batch entry")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--backend", nargs="+", default=["auto"], help="our kernel backend(s), each timed")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 gives stable figures on a shared CPU)")
    p.add_argument("--official", action="store_true",
                   help="also time the official FramePack app's model (framepack==0.0.9; batch 1 only)")
    p.add_argument("--teacache-skip", action="store_true",
                   help="also time a step TeaCache skips (embedders, probe, final layer; the inputs repeat, so "
                        "its output equals the computed one)")
    return p


def main():
    args = parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = compare(args, args.backend)
    config, device = result["config"], torch.device(args.device)
    print(f"device {device_name(device)} | torch {torch.__version__} | dtype {args.dtype}")
    print(f"config {args.config}: {config['num_attention_heads']} heads x {config['attention_head_dim']}, "
          f"{config['num_layers']} dual + {config['num_single_layers']} single, 2 refiner layers")
    print(f"inputs: batch {args.batch}, window {args.window}x{args.height}x{args.width} latents + history "
          f"(1x 2, 2x 2, 4x 16 frames) = {result['tokens']} image tokens, 729 SigLIP tokens, text "
          f"{'/'.join(map(str, args.text_valid))} valid of {args.text_len}")
    for name, ms in result["ms"].items():
        print(f"{name:>20}: median {ms:9.1f} ms   min {result['min_ms'][name]:9.1f} ms   "
              f"runs {' '.join(f'{x:.0f}' for x in result['runs_ms'][name])}   rel. L2 vs diffusers "
              f"{result['err'][name]:.1e}")
    for ref in [r for r in ("diffusers", "official") if r in result["ms"]]:
        for name in [n for n in result["ms"] if n.startswith("ours")]:
            print(f"ratio {ref} / {name}: {result['ms'][ref] / result['ms'][name]:.2f}x median, "
                  f"{result['min_ms'][ref] / result['min_ms'][name]:.2f}x min")


if __name__ == "__main__":
    main()
