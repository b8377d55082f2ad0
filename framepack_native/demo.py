"""The built-in demo: a tiny FramePack pipeline with deterministic RANDOM weights, built in memory.

It needs no download and shows the whole path (tokenizers, three encoders, VAE, section loop, mp4) running;
its video is not meaningful. Real generation needs converted checkpoints (python -m weights_convert).
"""
import math

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from framepack_native.image import SiglipProcessorConfig
from framepack_native.models import (CLIPTextEncoder, FramePackTransformer, HunyuanVideoVAE, LlamaTextEncoder,
                                     SiglipVisionEncoder)
from framepack_native.models.clip import CLIPTextConfig
from framepack_native.models.llama import LlamaConfig
from framepack_native.models.siglip import SiglipVisionConfig
from framepack_native.models.transformer import FramePackTransformerConfig
from framepack_native.models.vae import HunyuanVideoVAEConfig
from framepack_native.pipeline import FramePackPipeline
from framepack_native.sampling import FlowMatchConfig
from framepack_native.tokenizers import CLIPTokenizer, LlamaTokenizer

DEMO_PROMPT = "The sun sets slowly over a calm sea while small waves roll toward the shore."
LLAMA_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<pad>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>")


def demo_image(height=256, width=384):
    """The bundled sample picture, drawn in code: a sunset over the sea (PIL RGB)."""
    y = np.linspace(0, 1, height)[:, None, None]
    sky = np.array([0.98, 0.62, 0.35]) * (1 - y) + np.array([0.35, 0.25, 0.55]) * y
    img = np.broadcast_to(sky, (height, width, 3)).copy()
    horizon = int(height * 0.62)
    x = np.linspace(0, 6 * math.pi, width)[None, :]
    waves = 0.05 * np.sin(x + np.linspace(0, 20, height - horizon)[:, None])
    img[horizon:] = np.array([0.1, 0.25, 0.45]) + waves[..., None]
    pic = PIL.Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8))
    r = height // 7
    PIL.ImageDraw.Draw(pic).ellipse((width // 2 - r, horizon - 2 * r, width // 2 + r, horizon), fill=(255, 214, 120))
    return pic


def _byte_vocab():
    return {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}  # a set: fix the order


def demo_tokenizers():
    """Byte-level tokenizers (no merges) with the Llama-3 / CLIP special tokens: no vocabulary download."""
    llama = Tokenizer(BPE(vocab=_byte_vocab(), merges=[]))
    llama.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    llama.decoder = decoders.ByteLevel()
    llama.add_special_tokens([AddedToken(t, special=True) for t in LLAMA_SPECIALS])
    bos = llama.token_to_id("<|begin_of_text|>")
    llama.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                         special_tokens=[("<|begin_of_text|>", bos)])
    special = {"bos_token": AddedToken("<|begin_of_text|>", special=True),
               "eos_token": AddedToken("<|end_of_text|>", special=True),
               "pad_token": AddedToken("<pad>", special=True)}
    chars = list(_byte_vocab())
    clip_vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>",
                                                                                   "<|endoftext|>"])}
    return LlamaTokenizer(llama, special), CLIPTokenizer(clip_vocab, [], {})


@torch.no_grad()
def _randomize_(model, gen):
    """Deterministic random weights: fan-in scaled matrices, norms near 1, small biases."""
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
        elif name.endswith("weight"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return model.eval()


def demo_pipeline(seed=0, device="cpu", heads=2):
    """A FramePackPipeline of tiny components with random weights (seeded), on `device`, float32; `heads` attention
    heads of 16 in the transformer (6: a model that 2, 3 and 6 sequence-parallel ranks can split)."""
    gen = torch.Generator().manual_seed(seed)
    tokenizer, tokenizer_2 = demo_tokenizers()
    text_dim, pooled_dim, image_dim, channels = 32, 16, 24, 16  # 16 latent channels as the real VAE: previews work
    parts = {
        "transformer": FramePackTransformer(FramePackTransformerConfig.tiny(
            num_attention_heads=heads, in_channels=channels, out_channels=channels, text_embed_dim=text_dim, pooled_projection_dim=pooled_dim,
            image_proj_dim=image_dim)),
        "vae": HunyuanVideoVAE(HunyuanVideoVAEConfig(latent_channels=channels, block_out_channels=(16, 32, 32, 32),
                                                     layers_per_block=1, norm_num_groups=8)),
        "text_encoder": LlamaTextEncoder(LlamaConfig.tiny(vocab_size=tokenizer.tokenizer.get_vocab_size(),
                                                          hidden_size=text_dim, head_dim=8, num_hidden_layers=3)),
        "text_encoder_2": CLIPTextEncoder(CLIPTextConfig.tiny(vocab_size=tokenizer_2.tokenizer.get_vocab_size(),
                                                              hidden_size=pooled_dim, intermediate_size=32)),
        "image_encoder": SiglipVisionEncoder(SiglipVisionConfig.tiny(hidden_size=image_dim, intermediate_size=48,
                                                                     image_size=28, patch_size=7)),
    }
    parts = {k: _randomize_(m, gen).to(device) for k, m in parts.items()}
    return FramePackPipeline(tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                             image_processor=SiglipProcessorConfig(size=(28, 28)),
                             scheduler=FlowMatchConfig(shift=7.0), device=device, **parts)
