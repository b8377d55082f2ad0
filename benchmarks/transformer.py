"""FramePackTransformer forward vs diffusers' HunyuanVideoFramepackTransformer3DModel: same weights, inputs,
device and dtype, in one process, alternating; prints medians and the speed ratio (reference / ours).

    python benchmarks/transformer.py                        # CPU, float32, mid config
    python benchmarks/transformer.py --device cuda --dtype bf16 --config real --blocks 2 2
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from framepack_native.models.loading import config_from_dict  # noqa: E402
from framepack_native.models.transformer import FramePackTransformer, FramePackTransformerConfig  # noqa: E402
from framepack_native.sections import section_frame_indices  # noqa: E402
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
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_inputs(args, device, dtype):
    """One inverted anti-drifting section (padding 1 window) with the full 1x / 2x / 4x history, as the pipeline."""
    g = torch.Generator().manual_seed(0)
    B, T, H, W = args.batch, args.window, args.height, args.width
    lat, clean, h2, h4 = section_frame_indices("inverted_anti_drifting", T, T)
    mask = torch.zeros(B, args.text_len, dtype=torch.long)
    mask[:, :args.text_valid] = 1

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


def main():
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
    p.add_argument("--text-valid", type=int, default=64, help="valid text tokens (mask 1)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--backend", default="auto", help="our kernel backend")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 gives stable figures on a shared CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    config = {**CONFIGS[args.config], **COMMON}
    if args.blocks:
        config.update(num_layers=args.blocks[0], num_single_layers=args.blocks[1])
    torch.manual_seed(0)
    ref = HunyuanVideoFramepackTransformer3DModel(**config).to(device, dtype).eval()
    fields, state = convert_state(CONVERTER, ref.state_dict(), dict(ref.config))
    with torch.device("meta"):
        ours = FramePackTransformer(config_from_dict(FramePackTransformerConfig, fields))
    ours.load_state_dict(state, strict=True, assign=True)
    ours.eval().kernel_backend = args.backend
    inputs = make_inputs(args, device, dtype)

    run = {"diffusers": lambda: ref(**inputs, return_dict=False)[0], "ours": lambda: ours(**inputs)}
    times = {name: [] for name in run}
    with torch.inference_mode():
        outs = {name: fn() for name, fn in run.items()}  # warm-up
        for _ in range(args.runs):
            for name, fn in run.items():
                times[name].append(timed(fn, device)[0])
    err = ((outs["ours"].double() - outs["diffusers"].double()).norm() / outs["diffusers"].double().norm()).item()
    med = {name: statistics.median(t) for name, t in times.items()}
    n_img = args.window * args.height * args.width // 4 + 2 * args.height * args.width // 4 + \
        -(-args.height // 4) * -(-args.width // 4) + 4 * -(-args.height // 8) * -(-args.width // 8)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {name} | torch {torch.__version__} | dtype {args.dtype} | backend {args.backend}")
    print(f"config {args.config}: {config['num_attention_heads']} heads x {config['attention_head_dim']}, "
          f"{config['num_layers']} dual + {config['num_single_layers']} single, 2 refiner layers")
    print(f"inputs: batch {args.batch}, window {args.window}x{args.height}x{args.width} latents + history "
          f"(1x 2, 2x 2, 4x 16 frames) = {n_img} image tokens, 729 SigLIP tokens, text {args.text_valid} valid "
          f"of {args.text_len}")
    for name, t in times.items():
        print(f"{name:>9}: median {med[name] * 1e3:9.1f} ms   min {min(t) * 1e3:9.1f} ms   "
              f"runs {' '.join(f'{x * 1e3:.0f}' for x in t)}")
    print(f"ratio diffusers / ours: {med['diffusers'] / med['ours']:.2f}x median, "
          f"{min(times['diffusers']) / min(times['ours']):.2f}x min   (rel. L2 between outputs {err:.1e})")


if __name__ == "__main__":
    main()
