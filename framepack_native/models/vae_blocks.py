"""Blocks of the HunyuanVideo causal 3D VAE (arXiv:2412.03603, sec. 3.1): causal convolution, ResNet block,
causal frame attention, encoder and decoder.

Activations are channels-last (B, C, T, H, W) tensors. A convolution never materialises its normalised,
upsampled or padded input: it walks over chunks of output frames and writes each chunk's padded input
(GroupNorm + SiLU folded into one scale/shift, nearest upsampling, replicate padding) into one reused
buffer of at most CHUNK_ELEMENTS elements, so the large temporaries of the reference (normalised copy,
upsampled copy, padded copy) never exist at full size. Inference only (convolutions write in place).
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

MEMORY_FORMAT = torch.channels_last_3d
# Upper bound on the padded input one convolution call sees, in elements (256 MiB in bf16); tests lower it.
CHUNK_ELEMENTS = 1 << 27
EPS = 1e-6


class GroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics become a per-(batch, channel) scale and shift, applied by the consumer."""

    def scale_shift(self, x):
        """x (B, C, T, H, W) -> (scale, shift), each (B, C, 1, 1, 1) float32, with norm(x) = x * scale + shift."""
        B, C, T = x.shape[:3]
        G = self.num_groups
        # float32 input is reduced in one pass; lower precisions are upcast chunk by chunk to bound the copy.
        step = T if x.dtype == torch.float32 else max(1, CHUNK_ELEMENTS // max(1, x[:, :, :1].numel()))
        count, mean, m2 = 0, None, None
        for t0 in range(0, T, step):
            v = x[:, :, t0:t0 + step].float().unflatten(1, (G, C // G))  # (B, G, C/G, t, H, W)
            var_c, mean_c = torch.var_mean(v, dim=(2, 3, 4, 5), correction=0)  # (B, G)
            n = v[0, 0].numel()
            var_c, mean_c = var_c.double(), mean_c.double()
            if mean is None:
                mean, m2 = mean_c, var_c * n
            else:  # Chan et al.'s pairwise update of mean and sum of squared deviations
                delta = mean_c - mean
                mean = mean + delta * (n / (count + n))
                m2 = m2 + var_c * n + delta.square() * (count * n / (count + n))
            count += n
        rstd = torch.rsqrt(m2 / count + self.eps).float().repeat_interleave(C // G, dim=1)  # (B, C)
        scale = rstd * self.weight.float()
        shift = self.bias.float() - mean.float().repeat_interleave(C // G, dim=1) * scale
        return scale[:, :, None, None, None], shift[:, :, None, None, None]


class CausalConv3d(nn.Conv3d):
    """Conv3d with replicate padding: k_t - 1 frames on the past side, k // 2 on each side in space.

    Optional input transforms, applied chunk by chunk: `norm` = (scale, shift) from GroupNorm.scale_shift,
    giving SiLU(x * scale + shift); `upsample` = (f_t, f_s), nearest upsampling where the first frame is
    only upsampled in space (HunyuanVideoUpsampleCausal3D). `inplace` lets the output overwrite x
    (stride 1, C_in == C_out); `add_to` returns conv(x) + add_to, accumulated into add_to.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x, norm=None, upsample=None, inplace=False, add_to=None):
        """x (B, C_in, T, H, W) -> (B, C_out, T', H', W'), T' = (T_in - 1) // s_t + 1 for the T_in input frames."""
        B, C, T, H, W = x.shape
        kt, kh, kw = self.kernel_size
        st = self.stride[0]
        ft, fs = upsample or (1, 1)
        T_in, H_in, W_in = 1 + ft * (T - 1), fs * H, fs * W
        pt, ph, pw = kt - 1, kh // 2, kw // 2
        T_out = (T_in - 1) // st + 1
        frame = B * C * (H_in + 2 * ph) * (W_in + 2 * pw)
        n = max(1, min(T_out, (CHUNK_ELEMENTS // frame - kt) // st + 1))  # output frames per chunk
        starts = list(range(0, T_out, n))
        plain = norm is None and upsample is None and pt == ph == pw == 0
        if plain:
            step = lambda o0, o1: super(CausalConv3d, self).forward(x[:, :, o0 * st:(o1 - 1) * st + 1])
        else:
            buf = torch.empty((B, C, (n - 1) * st + kt, H_in + 2 * ph, W_in + 2 * pw), dtype=x.dtype, device=x.device,
                              memory_format=MEMORY_FORMAT)
            state = {"lo": None}  # padded-frame start of the chunk held in buf

            def step(o0, o1):
                # padded frames [p0, p1) feed output frames [o0, o1); padded frame p holds input frame p - pt
                p0, p1 = o0 * st, (o1 - 1) * st + kt
                m, keep, lo = p1 - p0, 0, state["lo"]
                if lo is not None and p1 > lo:  # the later chunk (done before) starts with our last frames
                    keep = p1 - lo
                    tail = buf[:, :, :keep]
                    buf[:, :, m - keep:m].copy_(tail.clone() if m - keep < keep else tail)
                a, b = max(p0 - pt, 0), p1 - keep - pt  # input frames to write, at buf index a + pt - p0
                if b > a:
                    self._fill(buf[:, :, a + pt - p0:b + pt - p0], x, a, b, norm, (ft, fs), (ph, pw))
                if p0 < pt:  # causal replicate padding: copies of input frame 0
                    first = buf[:, :, pt - p0:pt - p0 + 1]
                    buf[:, :, :pt - p0].copy_(first.expand(-1, -1, pt - p0, -1, -1))
                state["lo"] = p0
                return super(CausalConv3d, self).forward(buf[:, :, :m])

        if len(starts) == 1:
            y = step(0, T_out)
            return y if add_to is None else add_to.add_(y)
        if add_to is not None:
            out = add_to
        elif inplace:
            out = x
        else:
            H_out = (H_in + 2 * ph - kh) // self.stride[1] + 1
            W_out = (W_in + 2 * pw - kw) // self.stride[2] + 1
            out = torch.empty((B, self.out_channels, T_out, H_out, W_out), dtype=x.dtype, device=x.device,
                              memory_format=MEMORY_FORMAT)
        # Last chunk first: an in-place chunk then only overwrites frames no earlier chunk reads.
        for o0 in reversed(starts):
            o1 = min(o0 + n, T_out)
            y = step(o0, o1)
            if add_to is not None:
                out[:, :, o0:o1].add_(y)
            else:
                out[:, :, o0:o1].copy_(y)
        return out

    @staticmethod
    def _fill(dst, x, a, b, norm, upsample, pad):
        """Write input frames [a, b) (after norm / upsampling) into dst (B, C, b - a, H_in + 2ph, W_in + 2pw)."""
        ft, fs = upsample
        ph, pw = pad
        H_in, W_in = dst.shape[3] - 2 * ph, dst.shape[4] - 2 * pw
        inner = dst[:, :, :, ph:ph + H_in, pw:pw + W_in]  # (B, C, b - a, H_in, W_in)
        if fs > 1 or ft > 1:
            idx = [0 if t == 0 else 1 + (t - 1) // ft for t in range(a, b)]
            src = x[:, :, idx[0]:idx[-1] + 1] if ft == 1 else x.index_select(2, torch.tensor(idx, device=x.device))
            B, C, m, h, w = src.shape
            inner.unflatten(3, (h, fs)).unflatten(5, (w, fs)).copy_(  # (B, C, m, h, fs, w, fs)
                src[:, :, :, :, None, :, None].expand(B, C, m, h, fs, w, fs))
        elif norm is not None:
            scale, shift = norm
            torch.addcmul(shift, x[:, :, a:b], scale, out=inner)  # float32 math, rounded once to dst.dtype
            F.silu(inner, inplace=True)
        else:
            inner.copy_(x[:, :, a:b])
        if pw:
            rows = dst[:, :, :, ph:ph + H_in]
            rows[..., :pw].copy_(rows[..., pw:pw + 1].expand_as(rows[..., :pw]))
            rows[..., pw + W_in:].copy_(rows[..., pw + W_in - 1:pw + W_in].expand_as(rows[..., pw + W_in:]))
        if ph:
            dst[:, :, :, :ph].copy_(dst[:, :, :, ph:ph + 1].expand_as(dst[:, :, :, :ph]))
            dst[:, :, :, ph + H_in:].copy_(dst[:, :, :, ph + H_in - 1:ph + H_in].expand_as(dst[:, :, :, ph + H_in:]))


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> causal conv, twice, plus a (1x1x1 conv) shortcut (HunyuanVideoResnetBlockCausal3D)."""

    def __init__(self, in_channels, out_channels, groups):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps=EPS)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = GroupNorm(groups, out_channels, eps=EPS)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        """x (B, C_in, T, H, W) -> (B, C_out, T, H, W)."""
        h = self.conv1(x, norm=self.norm1.scale_shift(x))
        h = self.conv2(h, norm=self.norm2.scale_shift(h), inplace=True)
        if self.conv_shortcut is None:
            return h.add_(x)
        return self.conv_shortcut(x, add_to=h)


class CausalFrameAttention(nn.Module):
    """Single-head self-attention over all (t, h, w) positions; a frame sees itself and earlier frames.

    The reference builds a (THW, THW) additive mask (prepare_causal_attention_mask). Here each query frame
    attends to the key prefix of frames <= t, which is the same computation without the mask and without
    the masked-out half of the work. Torch SDPA rather than kernels.attention: one head of width 512 is
    outside what flash-style kernels are built for, and SDPA picks its memory-efficient kernel for it.
    """

    def __init__(self, channels, groups):
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=EPS)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x):
        """x (B, C, T, H, W) -> x + attention, same shape."""
        B, C, T, H, W = x.shape
        scale, shift = self.norm.scale_shift(x)
        h = torch.addcmul(shift, x, scale).to(x.dtype)
        img = rearrange(h, "B C T H W -> B (T H W) C")
        q, k, v = rearrange(self.qkv(img), "B L (K N D) -> K B N L D", K=3, N=1)
        del h, img
        out = torch.empty_like(q)  # (B, 1, L, C)
        L = H * W
        for t in range(T):
            out[:, :, t * L:(t + 1) * L] = F.scaled_dot_product_attention(
                q[:, :, t * L:(t + 1) * L], k[:, :, :(t + 1) * L], v[:, :, :(t + 1) * L])
        out = self.proj(rearrange(out, "B N L D -> B L (N D)"))
        return x + rearrange(out, "B (T H W) C -> B C T H W", T=T, H=H, W=W)


class MidBlock(nn.Module):
    """ResNet -> causal frame attention -> ResNet, at the lowest resolution (HunyuanVideoMidBlock3D)."""

    def __init__(self, channels, groups, attention):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([CausalFrameAttention(channels, groups)] if attention else [])

    def forward(self, x):
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


def resample_plan(config):
    """Per block level i: (time factor, space factor) of its down/up sampling, (1, 1) for none."""
    n = len(config.block_out_channels)
    n_s = int(math.log2(config.spatial_compression_ratio))
    n_t = int(math.log2(config.temporal_compression_ratio))
    return [(2 if n - 1 - n_t <= i < n - 1 else 1, 2 if i < n_s else 1) for i in range(n)]


class Encoder(nn.Module):
    """Video (B, 3, T, H, W) -> moments (B, 2 * latent_channels, (T - 1) // 4 + 1, H / 8, W / 8)."""

    def __init__(self, config):
        super().__init__()
        ch, G = config.block_out_channels, config.norm_num_groups
        self.conv_in = CausalConv3d(config.in_channels, ch[0])
        self.down_blocks = nn.ModuleList()
        for i, (ft, fs) in enumerate(resample_plan(config)):
            block = nn.Module()
            block.resnets = nn.ModuleList(ResnetBlock(ch[max(i - 1, 0)] if j == 0 else ch[i], ch[i], G)
                                          for j in range(config.layers_per_block))
            block.downsample = CausalConv3d(ch[i], ch[i], stride=(ft, fs, fs)) if (ft, fs) != (1, 1) else None
            self.down_blocks.append(block)
        self.mid_block = MidBlock(ch[-1], G, config.mid_block_add_attention)
        self.norm_out = GroupNorm(G, ch[-1], eps=EPS)
        self.conv_out = CausalConv3d(ch[-1], 2 * config.latent_channels)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            for resnet in block.resnets:
                x = resnet(x)
            if block.downsample is not None:
                x = block.downsample(x)
        x = self.mid_block(x)
        return self.conv_out(x, norm=self.norm_out.scale_shift(x))


class Decoder(nn.Module):
    """Latents (B, latent_channels, T, H, W) -> video (B, 3, 4 * (T - 1) + 1, 8 * H, 8 * W)."""

    def __init__(self, config):
        super().__init__()
        ch, G = config.block_out_channels[::-1], config.norm_num_groups
        self.conv_in = CausalConv3d(config.latent_channels, ch[0])
        self.mid_block = MidBlock(ch[0], G, config.mid_block_add_attention)
        self.up_blocks = nn.ModuleList()
        self.up_factors = resample_plan(config)  # the decoder mirrors the encoder's level order
        for i, (ft, fs) in enumerate(self.up_factors):
            block = nn.Module()
            block.resnets = nn.ModuleList(ResnetBlock(ch[max(i - 1, 0)] if j == 0 else ch[i], ch[i], G)
                                          for j in range(config.layers_per_block + 1))
            block.upsample = CausalConv3d(ch[i], ch[i]) if (ft, fs) != (1, 1) else None
            self.up_blocks.append(block)
        self.norm_out = GroupNorm(G, ch[-1], eps=EPS)
        self.conv_out = CausalConv3d(ch[-1], config.out_channels)

    def forward(self, z):
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block, factors in zip(self.up_blocks, self.up_factors):
            for resnet in block.resnets:
                x = resnet(x)
            if block.upsample is not None:
                x = block.upsample(x, upsample=factors)
        return self.conv_out(x, norm=self.norm_out.scale_shift(x))
