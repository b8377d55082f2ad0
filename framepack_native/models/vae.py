"""HunyuanVideo's causal 3D VAE (arXiv:2412.03603, sec. 3.1): 8x spatial, 4x temporal compression, with the
spatial and frame-wise tiling of diffusers' AutoencoderKLHunyuanVideo (same names, thresholds and blending).
"""
import dataclasses
import math

import torch
from torch import nn

from framepack_native.files import MAX_LAYERS, MAX_WIDTH, check_range
from framepack_native.models.activations import check_activation
from framepack_native.models.loading import load_pretrained
from framepack_native.models.vae_blocks import MEMORY_FORMAT, CausalConv3d, Decoder, Encoder
from framepack_native.noise import randn


ACT_FNS = ("silu", "swish", "mish", "gelu", "relu")  # diffusers' get_activation table


@dataclasses.dataclass(frozen=True)
class HunyuanVideoVAEConfig:
    """Defaults: HunyuanVideo's vae (diffusers' AutoencoderKLHunyuanVideo config names)."""
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.476986
    spatial_compression_ratio: int = 8
    temporal_compression_ratio: int = 4
    mid_block_add_attention: bool = True
    act_fn: str = "silu"                  # the ResNet blocks' activation (diffusers' get_activation names)

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "latent_channels", "norm_num_groups"):
            check_range(name, getattr(self, name), 1, MAX_WIDTH)
        check_range("layers_per_block", self.layers_per_block, 1, MAX_LAYERS)
        check_range("the number of block_out_channels", len(self.block_out_channels), 1, MAX_LAYERS)
        for c in self.block_out_channels:
            check_range("block_out_channels", c, 1, MAX_WIDTH)
        check_range("scaling_factor", self.scaling_factor, 0, above=True)
        check_activation(self.act_fn, "act_fn", names=ACT_FNS)
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"block_out_channels {self.block_out_channels}: {c} is not divisible by "
                                 f"norm_num_groups {self.norm_num_groups}")
        n_s = int(math.log2(self.spatial_compression_ratio)) if self.spatial_compression_ratio > 0 else -1
        if 2 ** n_s != self.spatial_compression_ratio or n_s > len(self.block_out_channels):
            raise ValueError(f"spatial_compression_ratio {self.spatial_compression_ratio} must be a power of 2 "
                             f"of at most 2^{len(self.block_out_channels)} (one 2x step per block)")
        if self.temporal_compression_ratio != 4 or len(self.block_out_channels) < 3:
            raise ValueError(f"temporal_compression_ratio must be 4 with at least 3 blocks, got "
                             f"{self.temporal_compression_ratio} with {len(self.block_out_channels)} blocks")

    def layer_counts(self):
        """{(field, key prefix): layers}, compared with a checkpoint's before the model is built."""
        blocks, n = len(self.block_out_channels), self.layers_per_block
        return {("block_out_channels", "encoder.down_blocks"): blocks,
                ("block_out_channels", "decoder.up_blocks"): blocks,
                ("layers_per_block", "encoder.down_blocks.0.resnets"): n,
                ("layers_per_block", "decoder.up_blocks.0.resnets"): n + 1}

    @classmethod
    def tiny(cls):
        """A 0.7M-parameter VAE with the real compression ratios and block layout, for CPU tests."""
        return cls(latent_channels=4, block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=4)


class GaussianPosterior:
    """Diagonal Gaussian over latents from the moments (B, 2C, T, H, W); draws as diffusers'
    DiagonalGaussianDistribution.sample (randn_tensor) does, so a shared generator gives the same latents."""

    def __init__(self, moments):
        self.moments = moments
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, C, T, H, W) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator=None):
        """mean + std * noise; noise drawn in the moments' dtype, on the generator's device (CPU -> moved)."""
        noise = randn(self.mean.shape, generator, self.moments.device, self.moments.dtype)
        return self.mean + self.std * noise

    def mode(self):
        return self.mean


def _blend(a, b, extent, dim):
    """Linear cross-fade of a's last `extent` slices into b's first ones along dim, in place in b (returned)."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent <= 0:
        return b
    shape = [1] * b.ndim
    shape[dim] = extent
    ramp = torch.arange(extent, dtype=torch.float64) / extent  # weights as the reference's Python floats
    w_b = ramp.to(device=b.device, dtype=torch.float32).view(shape)
    w_a = (1 - ramp).to(device=b.device, dtype=torch.float32).view(shape)
    head = b.narrow(dim, 0, extent)
    head.copy_(a.narrow(dim, a.shape[dim] - extent, extent) * w_a + head * w_b)
    return b


class HunyuanVideoVAE(nn.Module):
    """Causal video VAE: encode (B, 3, T, H, W) in [-1, 1] -> GaussianPosterior over (B, C, (T-1)//4+1, H/8, W/8);
    decode unscaled latents back. Inference only; tiling attributes and defaults as diffusers'."""

    config_class = HunyuanVideoVAEConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = CausalConv3d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = CausalConv3d(config.latent_channels, config.latent_channels, 1)
        self.scaling_factor = config.scaling_factor
        self.spatial_compression_ratio = config.spatial_compression_ratio
        self.temporal_compression_ratio = config.temporal_compression_ratio
        self.use_tiling = False
        # diffusers applies frame-wise tiling to long inputs by default, with or without enable_tiling()
        self.use_framewise_encoding = True
        self.use_framewise_decoding = True
        self.tile_sample_min_height = 256
        self.tile_sample_min_width = 256
        self.tile_sample_min_num_frames = 16
        self.tile_sample_stride_height = 192
        self.tile_sample_stride_width = 192
        self.tile_sample_stride_num_frames = 12

    @classmethod
    def from_pretrained(cls, path, dtype=torch.bfloat16, device="cuda"):
        return load_pretrained(cls, path, dtype, device)

    @property
    def dtype(self):
        return self.post_quant_conv.weight.dtype

    def enable_tiling(self, tile_sample_min_height=None, tile_sample_min_width=None, tile_sample_min_num_frames=None,
                      tile_sample_stride_height=None, tile_sample_stride_width=None,
                      tile_sample_stride_num_frames=None):
        """Spatial tiling with overlap blending; None (or 0) keeps the current value, as in diffusers."""
        self.use_tiling = True
        self.tile_sample_min_height = tile_sample_min_height or self.tile_sample_min_height
        self.tile_sample_min_width = tile_sample_min_width or self.tile_sample_min_width
        self.tile_sample_min_num_frames = tile_sample_min_num_frames or self.tile_sample_min_num_frames
        self.tile_sample_stride_height = tile_sample_stride_height or self.tile_sample_stride_height
        self.tile_sample_stride_width = tile_sample_stride_width or self.tile_sample_stride_width
        self.tile_sample_stride_num_frames = tile_sample_stride_num_frames or self.tile_sample_stride_num_frames

    def disable_tiling(self):
        self.use_tiling = False

    def _check(self, x, channels, what):
        if x.ndim != 5 or x.shape[1] != channels:
            raise ValueError(f"{what} must be (B, {channels}, T, H, W), got shape {tuple(x.shape)}")
        return x.to(self.dtype).contiguous(memory_format=MEMORY_FORMAT)

    # ---- encode -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, video):
        """video (B, 3, T, H, W) in [-1, 1] -> GaussianPosterior with mean/logvar (B, C, (T-1)//4+1, H/8, W/8)."""
        x = self._check(video, self.config.in_channels, "video")
        return GaussianPosterior(self._encode(x).contiguous())

    def _encode(self, x):
        T, H, W = x.shape[2:]
        if self.use_framewise_encoding and T > self.tile_sample_min_num_frames:
            return self._temporal_tiled_encode(x)
        if self.use_tiling and (W > self.tile_sample_min_width or H > self.tile_sample_min_height):
            return self.tiled_encode(x)
        return self.quant_conv(self.encoder(x))

    def tiled_encode(self, x):
        """Encode overlapping spatial tiles and cross-fade them (latent-space blending). Returns moments."""
        T, H, W = x.shape[2:]
        s = self.spatial_compression_ratio
        min_h, min_w = self.tile_sample_min_height // s, self.tile_sample_min_width // s
        stride_h, stride_w = self.tile_sample_stride_height // s, self.tile_sample_stride_width // s
        rows = [[self.quant_conv(self.encoder(x[:, :, :, i:i + self.tile_sample_min_height,
                                                  j:j + self.tile_sample_min_width]))
                 for j in range(0, W, self.tile_sample_stride_width)]
                for i in range(0, H, self.tile_sample_stride_height)]
        return self._stitch(rows, min_h - stride_h, min_w - stride_w, stride_h, stride_w)[..., :H // s, :W // s]

    def _temporal_tiled_encode(self, x):
        T, H, W = x.shape[2:]
        t = self.temporal_compression_ratio
        min_t, stride_t = self.tile_sample_min_num_frames // t, self.tile_sample_stride_num_frames // t
        tiles = []
        for i in range(0, T, self.tile_sample_stride_num_frames):
            tile = x[:, :, i:i + self.tile_sample_min_num_frames + 1]
            if self.use_tiling and (H > self.tile_sample_min_height or W > self.tile_sample_min_width):
                tile = self.tiled_encode(tile)
            else:
                tile = self.quant_conv(self.encoder(tile))
            tiles.append(tile if i == 0 else tile[:, :, 1:])
        return self._stitch_time(tiles, min_t - stride_t, stride_t)[:, :, :(T - 1) // t + 1]

    # ---- decode -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z):
        """z (B, C, T, H, W), unscaled latents -> video (B, 3, 4 * (T - 1) + 1, 8 * H, 8 * W)."""
        z = self._check(z, self.config.latent_channels, "latents")
        return self._decode(z).contiguous()

    def _decode(self, z):
        T, H, W = z.shape[2:]
        s, t = self.spatial_compression_ratio, self.temporal_compression_ratio
        if self.use_framewise_decoding and T > self.tile_sample_min_num_frames // t:
            return self._temporal_tiled_decode(z)
        if self.use_tiling and (W > self.tile_sample_min_width // s or H > self.tile_sample_min_height // s):
            return self.tiled_decode(z)
        return self.decoder(self.post_quant_conv(z))

    def tiled_decode(self, z):
        """Decode overlapping spatial latent tiles and cross-fade them in pixel space. Returns the video."""
        T, H, W = z.shape[2:]
        s = self.spatial_compression_ratio
        min_h, min_w = self.tile_sample_min_height // s, self.tile_sample_min_width // s
        stride_h, stride_w = self.tile_sample_stride_height // s, self.tile_sample_stride_width // s
        rows = [[self.decoder(self.post_quant_conv(z[:, :, :, i:i + min_h, j:j + min_w]))
                 for j in range(0, W, stride_w)]
                for i in range(0, H, stride_h)]
        out = self._stitch(rows, self.tile_sample_min_height - self.tile_sample_stride_height,
                           self.tile_sample_min_width - self.tile_sample_stride_width,
                           self.tile_sample_stride_height, self.tile_sample_stride_width)
        return out[..., :H * s, :W * s]

    def _temporal_tiled_decode(self, z):
        T, H, W = z.shape[2:]
        s, t = self.spatial_compression_ratio, self.temporal_compression_ratio
        min_t, stride_t = self.tile_sample_min_num_frames // t, self.tile_sample_stride_num_frames // t
        tiles = []
        for i in range(0, T, stride_t):
            tile = z[:, :, i:i + min_t + 1]
            if self.use_tiling and (W > self.tile_sample_min_width // s or H > self.tile_sample_min_height // s):
                video = self.tiled_decode(tile)
            else:
                video = self.decoder(self.post_quant_conv(tile))
            tiles.append(video if i == 0 else video[:, :, 1:])
        blend = self.tile_sample_min_num_frames - self.tile_sample_stride_num_frames
        return self._stitch_time(tiles, blend, self.tile_sample_stride_num_frames)[:, :, :(T - 1) * t + 1]

    # ---- blending: the reference blends each tile in place into the next, so a tile's edits carry on -----
    @staticmethod
    def _stitch(rows, blend_h, blend_w, keep_h, keep_w):
        """rows[i][j] (B, C, T, h, w) tiles -> one tensor; each tile cross-faded with its upper and left one."""
        out_rows = []
        for i, row in enumerate(rows):
            kept = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = _blend(rows[i - 1][j], tile, blend_h, dim=3)
                if j > 0:
                    tile = _blend(row[j - 1], tile, blend_w, dim=4)
                kept.append(tile[:, :, :, :keep_h, :keep_w])
            out_rows.append(torch.cat(kept, dim=4))  # (B, C, T, keep_h, W')
        return torch.cat(out_rows, dim=3)  # (B, C, T, H', W')

    @staticmethod
    def _stitch_time(tiles, blend, keep):
        """Frame tiles (the first with one extra leading frame) -> one tensor, cross-faded over `blend` frames."""
        kept = [tiles[0][:, :, :keep + 1]]
        for i in range(1, len(tiles)):
            kept.append(_blend(tiles[i - 1], tiles[i], blend, dim=2)[:, :, :keep])
        return torch.cat(kept, dim=2)  # (B, C, T', H, W)
