"""Reference builders for the VAE: diffusers AutoencoderKLHunyuanVideo with perturbed random weights, saved with
save_pretrained (the layout of hunyuanvideo-community/HunyuanVideo/vae).

Configs: a tiny one with the real compression ratios, and the real one (widths, groups, layers).
"""
import torch

from tests.reference.common import perturb_

VAE_TINY = dict(latent_channels=4, block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=4)
VAE_REAL = dict(latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)


def build_vae(path, seed=0, **config):
    from diffusers import AutoencoderKLHunyuanVideo
    model = AutoencoderKLHunyuanVideo(**config).eval()
    perturb_(model, seed)
    model.save_pretrained(path)


def load_reference(path):
    """The saved diffusers VAE, float32, eval mode."""
    from diffusers import AutoencoderKLHunyuanVideo
    return AutoencoderKLHunyuanVideo.from_pretrained(path, torch_dtype=torch.float32).eval()
