"""The 13B transformer, the VAE and the text encoders at their real sizes on one GPU: seconds per transformer
forward (resident, and streamed block by block as `--offload` runs it) and peak GPU memory of each, for one
640x640 section; the Llama + CLIP prompt encoding with the Llama moved in whole, and streamed layer by layer as
`--offload` runs it.

    python benchmarks/real_size.py                     # CUDA, bf16, the real configs (26 GB of random weights)
    python benchmarks/real_size.py --tiny --device cpu # the same code paths at toy sizes (checks the script)

Weights are random (uniform, small): speed and memory do not depend on their values. One inverted
anti-drifting section: a 9-frame window of 80x80 latents (640x640 frames) + the full 1x / 2x / 4x history,
text padded to 256 with 64 valid, 729 SigLIP tokens, batch 1; the VAE decodes the 2 x 9 + 1 = 19 latent frames
of a later section (73 frames) as the pipeline does. Peak memory = torch.cuda.max_memory_allocated over the
call, with the weights the call needs on the GPU counted in. The text encoders get a 256-token prompt (64
valid) and CLIP's 77 tokens, batch 1; the Llama encoder without the 2 layers FramePack never runs.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DTYPES, device_name, rel_l2  # noqa: E402
from benchmarks.transformer import make_inputs, parser as transformer_parser  # noqa: E402
from framepack_native.models.clip import CLIPTextConfig, CLIPTextEncoder  # noqa: E402
from framepack_native.models.llama import LlamaConfig, LlamaTextEncoder  # noqa: E402
from framepack_native.models.transformer import FramePackTransformer, FramePackTransformerConfig  # noqa: E402
from framepack_native.models.vae import HunyuanVideoVAE, HunyuanVideoVAEConfig  # noqa: E402
from framepack_native.offload import host_buffers, on_device, streamed_blocks  # noqa: E402
from framepack_native.prompt import HIDDEN_STATE_INDEX  # noqa: E402

GIB = 2**30


def random_model(cls, config, device, dtype):
    """cls(config) on `device` in `dtype` with uniform(-0.02, 0.02) weights, built without an fp32 copy."""
    with torch.device("meta"):
        model = cls(config).to(dtype)  # cast while empty: the weights are allocated once, in dtype
    model = model.to_empty(device=device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.uniform_(-0.02, 0.02, generator=gen)
    return model


def measure(fn, device, runs):
    """(median seconds, peak bytes allocated during the calls, last output); one warm-up call first."""
    out = fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return statistics.median(times), peak, out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def text_encoders(l_config, c_config, device, dtype, report):
    """The prompt encoding under --offload: both encoders kept on the CPU, moved to `device` for the call."""
    llama = random_model(LlamaTextEncoder, l_config, "cpu", dtype).drop_layers_after(HIDDEN_STATE_INDEX)
    clip = random_model(CLIPTextEncoder, c_config, "cpu", dtype)
    report("text encoders (Llama as kept, CLIP) weights GiB", round(sum(
        t.numel() * t.element_size() for m in (llama, clip) for t in m.parameters()) / GIB, 2))
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, l_config.vocab_size, (1, 256), generator=gen).to(device)
    mask = (torch.arange(256) < 64).long()[None].to(device)  # (1, 256): 64 valid tokens
    clip_ids = torch.randint(0, c_config.vocab_size, (1, 77), generator=gen).to(device)

    def encode(streamed):
        llama_there = streamed_blocks(llama, device, ("layers",)) if streamed else on_device(llama, device, True)
        with llama_there, on_device(clip, device, True):
            return llama(ids, mask, hidden_state_index=HIDDEN_STATE_INDEX), clip(clip_ids)[1]

    outputs = {}
    for streamed, label in ((False, "Llama moved in whole"), (True, "Llama streamed layer by layer, as --offload")):
        with torch.inference_mode():
            seconds, peak, outputs[streamed] = measure(lambda: encode(streamed), device, 1)
        report(f"text encoding ({label}): s, peak GiB", [round(seconds, 3), round(peak / GIB, 2)])
    report("text encoding streamed vs whole, rel. L2 (Llama, CLIP pooled)",
           [rel_l2(a, b) for a, b in zip(outputs[True], outputs[False])])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="toy configs and sizes (a check of the script)")
    p.add_argument("--out", help="also write the results to this JSON file")
    args = p.parse_args()
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here: --device cpu --tiny checks the script (the real sizes need ~30 GB)")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    results = {"device": device_name(device),
               "torch": torch.__version__, "dtype": args.dtype, "date": time.strftime("%Y-%m-%d")}

    def report(key, value):
        results[key] = value
        print(f"{key}: {value}", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))

    if args.tiny:
        t_config = FramePackTransformerConfig(num_attention_heads=2, attention_head_dim=64, num_layers=2,
                                              num_single_layers=2, rope_axes_dim=(16, 24, 24))
        v_config = HunyuanVideoVAEConfig(block_out_channels=(32, 32, 64, 64))
        l_config, c_config = LlamaConfig.tiny(num_hidden_layers=4), CLIPTextConfig.tiny()
        size, frames = ["--height", "8", "--width", "8"], 3
    else:
        t_config, v_config = FramePackTransformerConfig(), HunyuanVideoVAEConfig()
        l_config, c_config = LlamaConfig(), CLIPTextConfig()
        size, frames = ["--height", "80", "--width", "80"], 19
    text_encoders(l_config, c_config, device, dtype, report)
    inputs = make_inputs(transformer_parser().parse_args(size + ["--batch", "1"]), device, dtype)

    model = random_model(FramePackTransformer, t_config, device, dtype)
    report("transformer_parameters_billion", sum(t.numel() for t in model.parameters()) / 1e9)
    report("transformer_weights_gib", sum(t.numel() * t.element_size() for t in model.parameters()) / GIB)
    resident = {}
    with torch.inference_mode():
        for backend in ("auto", "torch"):
            model.kernel_backend = backend
            seconds, peak, resident[backend] = measure(lambda: model(**inputs), device, args.runs)
            report(f"resident forward ({backend}): s, peak GiB", [round(seconds, 3), round(peak / GIB, 2)])
        model.kernel_backend = "auto"
        with streamed_blocks(model, device):
            sync(device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            report("streamed: GiB on the GPU before the forward",
                   round(torch.cuda.memory_allocated(device) / GIB, 2) if device.type == "cuda" else 0)
            seconds, peak, streamed = measure(lambda: model(**inputs), device, args.runs)
            report("streamed forward (auto): s, peak GiB", [round(seconds, 3), round(peak / GIB, 2)])
            buffers = host_buffers(model)
            report("streamed: host buffers of the blocks' copies (count, GiB; pinned on CUDA)",
                   [len(buffers), round(sum(buffers) / GIB, 2)])
        report("streamed (auto) vs resident (auto) output, rel. L2", rel_l2(streamed, resident["auto"]))
        report("resident auto vs resident torch backend output, rel. L2", rel_l2(resident["auto"], resident["torch"]))
    del model, resident, streamed
    if device.type == "cuda":
        torch.cuda.empty_cache()

    vae = random_model(HunyuanVideoVAE, v_config, device, dtype)
    latents = torch.randn(1, v_config.latent_channels, frames, *inputs["hidden_states"].shape[-2:],
                          generator=torch.Generator().manual_seed(1)).to(device, dtype)
    with torch.inference_mode():
        for tiling in (False, True):
            if tiling:
                vae.enable_tiling()
            seconds, peak, video = measure(lambda: vae.decode(latents), device, 1)
            report(f"VAE decode {tuple(latents.shape)} -> {tuple(video.shape)}, spatial tiling {tiling}: "
                   "s, peak GiB", [round(seconds, 3), round(peak / GIB, 2)])


if __name__ == "__main__":
    main()
