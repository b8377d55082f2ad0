"""Text / image encoders, tokenizers and image preprocessing: ours vs transformers / diffusers, side by side.

    python benchmarks/encoders.py                          # CPU, fp32, reduced depths (see below)
    python benchmarks/encoders.py --device cuda --dtype bf16 --llama-layers 32 --siglip-layers 27 --clip-layers 12

Models are at the real widths (Llama-3-8B: 4096 / 32 heads / 8 KV heads / 14336 MLP; CLIP-L text: 768 / 12;
SigLIP so400m: 1152 / 16 / 4304, 384 px) with --*-layers layers (defaults keep the CPU run short), random
weights (speed does not depend on them), the same weights in both (converted in memory by weights_convert).
Inputs: one prompt through the HunyuanVideo template (95 + 256 = 351 Llama tokens, 77 CLIP tokens), one
640 x 640 image. Both encoders run the same work: Llama at hidden_state_index=-1 vs hidden_states[-1]
(in the pipeline ours stops at -3 and skips 2 of the 32 layers; the reference computes all of them).
Timing: alternating ours / reference, one warm-up each, median of --runs.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DTYPES, device_name, median_times, rel_l2  # noqa: E402


def bench(fns, runs, device="cpu"):
    """{name: median seconds of one call}, alternating after a warm-up (benchmarks.common.median_times)."""
    return median_times(fns, torch.device(device), runs, inner=1)


def native_from_reference(ref, converter, dtype, device):
    """Our model with the reference's weights, converted in memory."""
    from framepack_native.models.loading import config_from_dict
    from weights_convert.core import convert_state
    fields, state = convert_state(converter, ref.state_dict(), ref.config.to_dict())
    cls = converter.load_class()
    with torch.device("meta"):
        model = cls(config_from_dict(cls.config_class, fields))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def report(name, shape, medians, err, extra=""):
    ours, ref = medians["ours"], medians["reference"]
    print(f"| {name} | {shape} | {ours * 1e3:.1f} | {ref * 1e3:.1f} | {ref / ours:.2f}x | {err:.1e} |{extra}")


def llama(args, dtype):
    from transformers import LlamaConfig, LlamaModel
    from weights_convert.llama import CONVERTER
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.llama_layers,
                      num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
                      max_position_embeddings=8192)
    ref = LlamaModel(cfg).to(args.device, dtype).eval()
    ours = native_from_reference(ref, CONVERTER, dtype, args.device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128000, (1, 351), generator=g).to(args.device)
    mask = torch.ones_like(ids)
    mask[:, 130:] = 0   # a 35-token prompt after the 95 template tokens, then padding
    fns = {"ours": lambda: ours(ids, mask, hidden_state_index=-1),
           "reference": lambda: ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]}
    with torch.no_grad():
        err = rel_l2(fns["ours"](), fns["reference"]())
        medians = bench(fns, args.runs, args.device)
    n = sum(p.numel() for p in ours.layers.parameters())
    tflops = 2 * n * ids.numel() / medians["ours"] / 1e12
    report(f"Llama-3 (4096, {args.llama_layers} layers)", "1 x 351 tokens", medians, err,
           f" {tflops:.2f} TFLOP/s (ours, matmuls)")
    del ref, ours


def clip(args, dtype):
    from transformers import CLIPTextConfig, CLIPTextModel
    from weights_convert.clip import CONVERTER
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=args.clip_layers,
                         num_attention_heads=12, max_position_embeddings=77, eos_token_id=2)
    ref = CLIPTextModel(cfg).to(args.device, dtype).eval()
    ours = native_from_reference(ref, CONVERTER, dtype, args.device)
    ids = torch.full((1, 77), 49407)
    ids[0, :20] = torch.randint(0, 49406, (20,), generator=torch.Generator().manual_seed(2))
    ids[0, 0] = 49406
    ids = ids.to(args.device)
    fns = {"ours": lambda: ours(ids)[1], "reference": lambda: ref(input_ids=ids).pooler_output}
    with torch.no_grad():
        err = rel_l2(fns["ours"](), fns["reference"]())
        medians = bench(fns, args.runs, args.device)
    report(f"CLIP-L text ({args.clip_layers} layers)", "1 x 77 tokens", medians, err)


def siglip(args, dtype):
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from weights_convert.siglip import CONVERTER
    torch.manual_seed(0)
    cfg = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=args.siglip_layers,
                             num_attention_heads=16, image_size=384, patch_size=14)
    ref = SiglipVisionModel(cfg).to(args.device, dtype).eval()
    ours = native_from_reference(ref, CONVERTER, dtype, args.device)
    x = (torch.rand(1, 3, 384, 384, generator=torch.Generator().manual_seed(3)) * 2 - 1).to(args.device, dtype)
    fns = {"ours": lambda: ours(x), "reference": lambda: ref(pixel_values=x).last_hidden_state}
    with torch.no_grad():
        err = rel_l2(fns["ours"](), fns["reference"]())
        medians = bench(fns, args.runs, args.device)
    report(f"SigLIP so400m ({args.siglip_layers} layers)", "1 x 3 x 384 x 384", medians, err)


def tokenizers_and_image(args):
    """Tokenization of one templated prompt (both tokenizers) and the VAE + SigLIP image preprocessing."""
    import numpy as np
    import PIL.Image
    from diffusers.video_processor import VideoProcessor
    from transformers import CLIPTokenizer as RefCLIP
    from transformers import PreTrainedTokenizerFast, SiglipImageProcessor

    from framepack_native.image import siglip_pixels, vae_pixels
    from framepack_native.prompt import HUNYUAN_TEMPLATE
    from framepack_native.tokenizers import CLIPTokenizer, LlamaTokenizer
    from tests.reference.encoders import build_clip_tokenizer, build_llama_tokenizer, clip_bpe_vocab

    prompt = "A character doing some simple body movements, realistic, soft light, the camera slowly pans."
    with tempfile.TemporaryDirectory() as tmp:
        llama_dir = build_llama_tokenizer(Path(tmp) / "tokenizer")
        ours_l, ref_l = LlamaTokenizer.from_pretrained(llama_dir), PreTrainedTokenizerFast.from_pretrained(llama_dir)
        vocab = clip_bpe_vocab()
        clip_dir = build_clip_tokenizer(Path(tmp) / "tokenizer_2", *vocab) if vocab else None
        ours_c = CLIPTokenizer.from_pretrained(clip_dir) if clip_dir else None
        ref_c = RefCLIP.from_pretrained(clip_dir) if clip_dir else None
    text = HUNYUAN_TEMPLATE.format(prompt)
    fns = {"ours": lambda: ours_l([text], 351),
           "reference": lambda: ref_l([text], padding="max_length", max_length=351, truncation=True,
                                      return_tensors="pt")}
    same = ours_l([text], 351)[0].tolist() == ref_l([text], padding="max_length", max_length=351)["input_ids"]
    report("Llama-3 tokenizer", "1 prompt, 351 tokens", bench(fns, args.runs * 4), 0.0 if same else 1.0)
    if ours_c:
        fns = {"ours": lambda: ours_c([prompt]),
               "reference": lambda: ref_c([prompt], padding="max_length", max_length=77, truncation=True,
                                          return_tensors="pt")}
        report("CLIP tokenizer", "1 prompt, 77 tokens", bench(fns, args.runs * 4), 0.0)
    g = np.random.default_rng(0)
    image = PIL.Image.fromarray(g.integers(0, 256, (720, 960, 3), dtype=np.uint8))
    vp = VideoProcessor(vae_scale_factor=8)
    fns = {"ours": lambda: vae_pixels(image, 640, 640), "reference": lambda: vp.preprocess(image, 640, 640)}
    err = (fns["ours"]() - fns["reference"]()).abs().max().item()
    report("VAE preprocessing", "720x960 PIL -> 640x640", bench(fns, args.runs), err, " (max abs)")
    pixels = vae_pixels(image, 640, 640)
    fe = SiglipImageProcessor(size={"height": 384, "width": 384}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    fns = {"ours": lambda: siglip_pixels(pixels),
           "reference": lambda: fe(images=(pixels + 1) / 2.0, return_tensors="pt", do_rescale=False).pixel_values}
    err = (fns["ours"]() - fns["reference"]()).abs().max().item()
    report("SigLIP preprocessing", "640x640 -> 384x384", bench(fns, args.runs), err, " (max abs)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--llama-layers", type=int, default=2)
    parser.add_argument("--clip-layers", type=int, default=12)
    parser.add_argument("--siglip-layers", type=int, default=4)
    parser.add_argument("--only", choices=("llama", "clip", "siglip", "preprocessing"), nargs="*")
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    dev = device_name(args.device)
    import transformers
    print(f"device: {dev}; torch {torch.__version__}; transformers {transformers.__version__}; dtype {args.dtype}; "
          f"median of {args.runs} alternating runs after a warm-up")
    print("| stage | input | ours ms | reference ms | speed-up | rel. L2 error |")
    print("|---|---|---|---|---|---|")
    stages = {"llama": lambda: llama(args, dtype), "clip": lambda: clip(args, dtype),
              "siglip": lambda: siglip(args, dtype), "preprocessing": lambda: tokenizers_and_image(args)}
    for name, fn in stages.items():
        if not args.only or name in args.only:
            fn()


if __name__ == "__main__":
    main()
