"""SigLIP vision tower (so400m-patch14-384, FramePack's image encoder): patches -> post-layernorm tokens.

The attention-pooling head is left out: FramePack conditions on last_hidden_state.
"""
import dataclasses

import torch
from einops import rearrange
from torch import nn

from framepack_native.files import MAX_LAYERS, MAX_POSITIONS, MAX_WIDTH, check_range
from framepack_native.models.activations import check_activation
from framepack_native.models.clip import EncoderBlock
from framepack_native.models.loading import load_pretrained


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
    """Defaults: siglip-so400m-patch14-384, flux_redux_bfl's image_encoder (transformers' SiglipVisionConfig names)."""
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 384
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        sizes = {"hidden_size": MAX_WIDTH, "intermediate_size": MAX_WIDTH, "num_hidden_layers": MAX_LAYERS,
                 "num_attention_heads": MAX_WIDTH, "num_channels": MAX_WIDTH, "image_size": MAX_WIDTH,
                 "patch_size": MAX_WIDTH}
        for name, high in sizes.items():
            check_range(name, getattr(self, name), 1, high)
        check_range("layer_norm_eps", self.layer_norm_eps, 0, above=True)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be at least patch_size {self.patch_size}")
        check_range("(image_size // patch_size)^2 positions", self.num_patches, 1, MAX_POSITIONS)
        check_activation(self.hidden_act)

    def layer_counts(self):
        """{(field, key prefix): layers}, compared with a checkpoint's before the model is built."""
        return {("num_hidden_layers", "layers"): self.num_hidden_layers}

    @property
    def num_patches(self):
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def tiny(cls, **overrides):
        """A 2-layer config on 30 px images (patch 7: 16 tokens, the last 2 px cropped by the stride)."""
        fields = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      image_size=30, patch_size=7)
        return cls(**{**fields, **overrides})


class SiglipVisionEncoder(nn.Module):
    """SigLIP ViT (transformers' SiglipVisionModel without the pooling head)."""

    config_class = SiglipVisionConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = nn.Conv2d(c.num_channels, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(c.num_patches, c.hidden_size))
        self.layers = nn.ModuleList(
            EncoderBlock(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act,
                         c.layer_norm_eps, causal=False)
            for _ in range(c.num_hidden_layers))
        self.post_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    @classmethod
    def from_pretrained(cls, path, dtype=torch.bfloat16, device="cuda"):
        return load_pretrained(cls, path, dtype, device)

    def forward(self, pixel_values):
        """pixel_values (B, C, S, S) normalised to [-1, 1] -> last_hidden_state (B, (S // patch)^2, D)."""
        c = self.config
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (c.num_channels, c.image_size, c.image_size):
            raise ValueError(f"pixel_values must be (B, {c.num_channels}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(pixel_values.shape)}")
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (B, D, h, w)
        x = rearrange(x, "B D h w -> B (h w) D") + self.pos_embed
        for layer in self.layers:
            x = layer(x)
        return self.post_norm(x)
