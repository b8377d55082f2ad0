"""Blocks of the HunyuanVideo causal 3D VAE (arXiv:2412.03603, sec. 3.1): causal convolution, ResNet block,
causal frame attention, encoder and decoder.

Activations and conv weights are channels-last. A convolution never materialises its normalised or padded
input: it walks over chunks of output frames and writes each chunk's padded input (GroupNorm + activation,
replicate padding) into one reused buffer of at most chunk_budget() elements, so the full-size temporaries
of the reference (normalised copy, padded copy, upsampled copy) never exist. Nearest upsampling + conv is
computed on the low-resolution input (UpsampleConv3d). Inference only: convolutions write in place.
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

import kernels
from framepack_native.models.activations import activation_into

MEMORY_FORMAT = torch.channels_last_3d
# Upper bound on a chunk's temporaries (padded conv input, float32 copy for statistics), in elements (32 MiB
# in bf16); a chunk also stays under a quarter of its tensor, and holds at least one frame. Tests lower it.
CHUNK_ELEMENTS = 1 << 24


def chunk_budget(numel):
    """Elements a chunk of a numel-element tensor may hold."""
    return min(CHUNK_ELEMENTS, max(numel // 4, 1 << 20))


EPS = 1e-6


class GroupNorm(nn.GroupNorm):
    """GroupNorm split in two: statistics over the whole input, then normalisation of any chunk of it.

    `act` (an activations.ACTIVATIONS name) follows the norm when a CausalConv3d reads it as `norm`.
    """

    def __init__(self, num_groups, num_channels, eps=EPS, act="silu"):
        super().__init__(num_groups, num_channels, eps=eps)
        self.act = act

    def stats(self, x):
        """x (B, C, T, H, W) -> (mean, var), each (B, C) float32: the (biased) statistics of each channel's group."""
        B, C = x.shape[:2]
        G = self.num_groups
        img = rearrange(x, "B C T H W -> B (T H W) C")  # a view for channels-last x
        step = max(1, chunk_budget(x.numel()) // (B * C))
        sq = torch.empty((B, min(step, img.shape[1]), C), dtype=torch.float32, device=x.device)
        s1 = s2 = 0.0
        for l0 in range(0, img.shape[1], step):
            part = img[:, l0:l0 + step]
            # float32 partial sums, combined in float64 (sum(x^2) / n - mean^2 needs the headroom)
            s1 = s1 + part.sum(1, dtype=torch.float32).double()  # (B, C)
            s2 = s2 + sq[:, :part.shape[1]].copy_(part).square_().sum(1).double()
        n = x[0, :C // G].numel()
        mean = s1.view(B, G, C // G).sum(-1) / n  # (B, G)
        var = (s2.view(B, G, C // G).sum(-1) / n - mean.square()).clamp_min(0)
        return mean.float().repeat_interleave(C // G, dim=1), var.float().repeat_interleave(C // G, dim=1)

    def normalize(self, x, stats, index):
        """Normalise x (1, C, t, H, W), a part of batch element `index` of the input of stats."""
        mean, var = stats
        # eval-mode batch_norm with the group statistics per channel is GroupNorm, in one fused pass;
        # it computes in float32 and rounds once to x.dtype, like GroupNorm.
        return F.batch_norm(x, mean[index], var[index], self.weight.float(), self.bias.float(), False, 0.0, self.eps)


class CausalConv3d(nn.Conv3d):
    """Conv3d with replicate padding: k_t - 1 frames on the past side, k // 2 on each side in space.

    `norm` = a GroupNorm makes the input norm.act(norm(x)), applied chunk by chunk (statistics over all of x
    first). `inplace` lets the output overwrite x (stride 1, C_in == C_out); `add_to` returns
    conv(x) + add_to, accumulated into add_to.

    The first output frames see copies of frame 0 through the causal padding: they are computed from
    frames 0 and 1 with the taps that read the same frame summed, 2D convs with 3 taps for both frames
    (2 for frame 0 alone) instead of 6, and the padding frames are never built.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        if self.kernel_size[0] not in (1, 3):
            raise ValueError(f"causal conv: temporal kernel size must be 1 or 3, got {self.kernel_size[0]}")
        self.weight.data = self.weight.data.contiguous(memory_format=MEMORY_FORMAT)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # channels-last weights next to channels-last activations: no per-call weight reorder in the conv
        if prefix + "weight" in state_dict:
            state_dict[prefix + "weight"] = state_dict[prefix + "weight"].contiguous(memory_format=MEMORY_FORMAT)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x, norm=None, inplace=False, add_to=None):
        """x (B, C_in, T, H, W) -> (B, C_out, (T - 1) // s_t + 1, H', W')."""
        B, C, T, H, W = x.shape
        kt, kh, kw = self.kernel_size
        st = self.stride[0]
        pt, ph, pw = kt - 1, kh // 2, kw // 2
        if norm is None and pt == ph == pw == 0 and self.stride == (1, 1, 1):
            return self._pointwise(x, add_to)
        if norm is not None:  # statistics of all of x, before any chunk overwrites it
            norm = (norm, norm.stats(x))
        T_out = (T - 1) // st + 1
        H_out, W_out = (H + 2 * ph - kh) // self.stride[1] + 1, (W + 2 * pw - kw) // self.stride[2] + 1
        if add_to is not None:
            out = add_to
        elif inplace:
            out = x
        else:
            out = torch.empty((B, self.out_channels, T_out, H_out, W_out), dtype=x.dtype, device=x.device,
                              memory_format=MEMORY_FORMAT)
        write = (lambda dst, y: dst.add_(y)) if add_to is not None else (lambda dst, y: dst.copy_(y))
        head = min(T_out, -(-pt // st))  # output frames whose window reaches before frame 0: 0, 1 or 2
        frame = B * C * (H + 2 * ph) * (W + 2 * pw)
        n = max(1, (chunk_budget(x.numel()) // frame - kt) // st + 1)  # output frames per chunk
        buf, lo = None, None  # lo: first input frame held in buf
        # Last chunk first: in place, a chunk then only overwrites frames that no later-processed chunk reads.
        for o0 in reversed(range(head, T_out, n)):
            o1 = min(o0 + n, T_out)
            a, b = o0 * st - pt, (o1 - 1) * st + 1  # input frames of this chunk, all >= 0
            if buf is None:
                buf = torch.empty((B, C, (min(n, T_out - head) - 1) * st + kt, H + 2 * ph, W + 2 * pw),
                                  dtype=x.dtype, device=x.device, memory_format=MEMORY_FORMAT)
            m, keep = b - a, max(0, b - lo) if lo is not None else 0
            if keep:  # the chunk done before starts with this chunk's last frames
                tail = buf[:, :, :keep]
                buf[:, :, m - keep:m].copy_(tail.clone() if m - keep < keep else tail)
            self._fill(buf[:, :, :m - keep], x[:, :, a:b - keep], norm, ph, pw)
            lo = a
            write(out[:, :, o0:o1], super().forward(buf[:, :, :m]))
        if head:
            self._head(x, norm, out, write, head, buf)
        return out

    def _head(self, x, norm, out, write, head, buf=None):
        """Output frames [0, head) (head <= 2) from input frames 0 and 1, without the padding frames.

        With taps w0, w1, w2 (oldest first): frame 0 = x0 * (w0 + w1) + x0 * w2 and, for stride 1,
        frame 1 = x0 * (w0 + w1) + x1 * w2; both share the first term.
        """
        ph, pw = self.kernel_size[1] // 2, self.kernel_size[2] // 2
        B, C, _, H, W = x.shape
        if buf is None:  # else the main chunks' buffer, free by now, holds the (normalised, padded) frames
            buf = torch.empty((B, C, head, H + 2 * ph, W + 2 * pw), dtype=x.dtype, device=x.device,
                              memory_format=MEMORY_FORMAT)
        self._fill(buf[:, :, :head], x[:, :, :head], norm, ph, pw)
        frames = [buf[:, :, t] for t in range(head)]  # (B, C, H + 2ph, W + 2pw) each
        w = self.weight
        w01 = (w[:, :, 0].float() + w[:, :, 1].float()).to(w.dtype).contiguous(memory_format=torch.channels_last)
        stride = self.stride[1:]
        shared = F.conv2d(frames[0], w01, self.bias, stride)  # (B, C_out, H', W')
        if head == 2:  # frame 1 first: in place, frame 0 must still be intact for it
            write(out[:, :, 1], F.conv2d(frames[1], w[:, :, 2], None, stride).add_(shared))
        write(out[:, :, 0], shared.add_(F.conv2d(frames[0], w[:, :, 2], None, stride)))

    def _pointwise(self, x, add_to):
        """1x1x1 convolution as one GEMM; accumulated straight into add_to when it is channels-last."""
        w = self.weight.flatten(1)  # (C_out, C_in)
        img = rearrange(x, "B C T H W -> (B T H W) C")
        if add_to is not None and add_to.is_contiguous(memory_format=MEMORY_FORMAT):
            rearrange(add_to, "B C T H W -> (B T H W) C").addmm_(img, w.t()).add_(self.bias)  # a view of add_to
            return add_to
        B, C, T, H, W = x.shape
        y = rearrange(F.linear(img, w, self.bias), "(B T H W) C -> B C T H W", B=B, T=T, H=H, W=W)
        return y if add_to is None else add_to.add_(y)

    @staticmethod
    def _fill(dst, src, norm, ph, pw):
        """Write src (B, C, t, H, W), through act(norm) if given, into dst (B, C, t, H + 2ph, W + 2pw), padded."""
        H, W = src.shape[3:]
        inner = dst[:, :, :, ph:ph + H, pw:pw + W]
        if norm is None:
            inner.copy_(src)
        else:
            gn, stats = norm
            for i in range(src.shape[0]):
                activation_into(gn.act, gn.normalize(src[i:i + 1], stats, i), inner[i:i + 1])
        if pw:
            rows = dst[:, :, :, ph:ph + H]
            rows[..., :pw].copy_(rows[..., pw:pw + 1].expand_as(rows[..., :pw]))
            rows[..., pw + W:].copy_(rows[..., pw + W - 1:pw + W].expand_as(rows[..., pw + W:]))
        if ph:
            dst[:, :, :, :ph].copy_(dst[:, :, :, ph:ph + 1].expand_as(dst[:, :, :, :ph]))
            dst[:, :, :, ph + H:].copy_(dst[:, :, :, ph + H - 1:ph + H].expand_as(dst[:, :, :, ph + H:]))


def _merge_taps(w, dim):
    """3 taps along dim -> (2 phases, ..., 2 taps along dim, ...). After 2x nearest upsampling (replicate
    padded) a 3-tap kernel acts on the original samples as (k0, k1 + k2) for even outputs (samples i - 1, i)
    and (k0 + k1, k2) for odd ones (samples i, i + 1)."""
    k0, k1, k2 = w.unbind(dim)
    return torch.stack([torch.stack([k0, k1 + k2], dim), torch.stack([k0 + k1, k2], dim)])


class UpsampleConv3d(CausalConv3d):
    """Nearest upsampling by (f_t, f_s) (the first frame only in space), then a causal 3x3x3 conv, as
    HunyuanVideoUpsampleCausal3D; computed on the low-resolution input with merged taps.

    The conv of an upsampled signal is a set of smaller convs of the signal itself, one per output phase:
    2x2 spatial taps for each of the 4 (y, x) phases, and for f_t = 2, 2 temporal taps for each of the 2
    frame phases (frame 0 sees frame 0 three times: the three taps summed). That is 64 instead of 216
    multiply-adds per low-resolution position for (2, 2, 2). The phase convs are one conv with stacked
    output channels, whose outputs are interleaved into the result.
    """

    def __init__(self, channels, factors):
        super().__init__(channels, channels)
        self.factors = factors  # (f_t, f_s), each 1 or 2

    def phase_weights(self):
        """[main] or [first, main] phase-stacked kernels, channels-last: main (R P P C, C, k_t, k, k) with R temporal
        phases (R = k_t = 2 for f_t = 2, else 1 and 3), P = k = 2 for f_s = 2 (else 1 and 3); first (P P C, C, 1, k, k).

        Recomputed per call (a cache would keep 2.4x the weight's memory), in float32, 64 output channels at a time.
        """
        ft, fs = self.factors
        w = self.weight
        C_out, C_in = w.shape[:2]
        P, k = (2, 2) if fs == 2 else (1, 3)
        R, kt = (2, 2) if ft == 2 else (1, 3)
        new = lambda phases, taps: torch.empty((phases * C_out, C_in, taps, k, k), dtype=w.dtype, device=w.device,
                                               memory_format=MEMORY_FORMAT)
        main, first = new(R * P * P, kt), (new(P * P, 1) if ft == 2 else None)
        main_v = main.unflatten(0, (R, P, P, C_out))
        first_v = None if first is None else first.unflatten(0, (P, P, C_out))
        for c0 in range(0, C_out, 64):
            part = w[c0:c0 + 64].float()[None, None]  # (1, 1, c, C_in, 3, 3, 3)
            if fs == 2:
                part = _merge_taps(_merge_taps(part[0, 0], 4), 4)  # width then height: (P_y, P_x, c, C_in, 3, 2, 2)
            if ft == 2:
                first_v[:, :, c0:c0 + 64] = part.sum(4, keepdim=True)
                main_v[:, :, :, c0:c0 + 64] = _merge_taps(part, 4)
            else:
                main_v[0, :, :, c0:c0 + 64] = part
        return [main] if first is None else [first, main]

    def forward(self, x):
        """x (B, C, T, H, W) -> (B, C, 1 + f_t (T - 1), f_s H, f_s W)."""
        B, C, T, H, W = x.shape
        ft, fs = self.factors
        *w_first, w_main = self.phase_weights()
        P, k = (2, 2) if fs == 2 else (1, 3)
        out = torch.empty((B, C, 1 + ft * (T - 1), fs * H, fs * W), dtype=x.dtype, device=x.device,
                          memory_format=MEMORY_FORMAT)
        grid = out.unflatten(3, (H, fs)).unflatten(5, (W, fs))  # (B, C, T_out, H, f_s, W, f_s)

        def conv(frames, front, weight):
            inp = F.pad(frames, (1, 1, 1, 1, front, 0), mode="replicate")
            bias = self.bias.repeat(weight.shape[0] // C)
            if weight.shape[2] == 1:  # one frame: a 2D conv (a faster kernel than the 3D one on CPU)
                y = F.conv2d(inp.squeeze(2), weight.squeeze(2), bias).unsqueeze(2)
            else:
                y = F.conv3d(inp, weight, bias)
            return y.unflatten(1, (-1, P, P, C))  # (B, phases_t, P, P, C, t, H + 3 - k, W + 3 - k)

        def scatter(y, targets):  # targets[r]: (B, C, t, H, f_s, W, f_s) view for temporal phase r of y
            for r, target in enumerate(targets):
                for py in range(P):
                    for px in range(P):
                        target[:, :, :, :, py, :, px].copy_(y[:, r, py, px, :, :, py:py + H, px:px + W])

        n = max(1, CHUNK_ELEMENTS // (B * w_main.shape[0] * (H + 3 - k) * (W + 3 - k)))  # frames per chunk
        if ft == 2:
            scatter(conv(x[:, :, :1], 0, w_first[0]), [grid[:, :, :1]])
            pairs = grid[:, :, 1:].unflatten(2, (T - 1, 2))  # frames 1 + 2j and 2 + 2j: phases 1 and 0
            for j0 in range(0, T - 1, n):
                j1 = min(j0 + n, T - 1)
                scatter(conv(x[:, :, j0:j1 + 1], 0, w_main), [pairs[:, :, j0:j1, 1], pairs[:, :, j0:j1, 0]])
        else:
            for j0 in range(0, T, n):
                j1 = min(j0 + n, T)
                lo = max(j0 - 2, 0)
                scatter(conv(x[:, :, lo:j1], lo - (j0 - 2), w_main), [grid[:, :, j0:j1]])
        return out


class ResnetBlock(nn.Module):
    """GroupNorm -> act -> causal conv, twice, plus a (1x1x1 conv) shortcut (HunyuanVideoResnetBlockCausal3D)."""

    def __init__(self, in_channels, out_channels, groups, act="silu"):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps=EPS, act=act)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = GroupNorm(groups, out_channels, eps=EPS, act=act)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        """x (B, C_in, T, H, W) -> (B, C_out, T, H, W)."""
        h = self.conv1(x, norm=self.norm1)
        h = self.conv2(h, norm=self.norm2, inplace=True)
        if self.conv_shortcut is None:
            return h.add_(x)
        return self.conv_shortcut(x, add_to=h)


class CausalFrameAttention(nn.Module):
    """Single-head self-attention over all (t, h, w) positions; a frame sees itself and earlier frames.

    The reference builds a (THW, THW) additive mask (prepare_causal_attention_mask). Here the queries of
    frame t attend to the key prefix of frames <= t: the same computation without the mask (which a
    kv_mask cannot express) and without the masked-out half of the work. kernels.attention's Triton
    kernel takes head dims 64 and 128, so this single 512-wide head runs on its torch (SDPA) path.
    """

    def __init__(self, channels, groups):
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=EPS)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x):
        """x (B, C, T, H, W) -> x + attention, same shape."""
        B, C, T, H, W = x.shape
        stats = self.norm.stats(x)
        h = torch.cat([self.norm.normalize(x[i:i + 1], stats, i) for i in range(B)])
        img = rearrange(h, "B C T H W -> B (T H W) C")
        q, k, v = rearrange(self.qkv(img), "B L (K N D) -> K B L N D", K=3, N=1)
        del h, img
        out = torch.empty_like(q)  # (B, THW, 1, C)
        L = H * W
        for t in range(T):
            out[:, t * L:(t + 1) * L] = kernels.attention(q[:, t * L:(t + 1) * L], k[:, :(t + 1) * L],
                                                          v[:, :(t + 1) * L])
        out = self.proj(rearrange(out, "B L N D -> B L (N D)"))
        return x + rearrange(out, "B (T H W) C -> B C T H W", T=T, H=H, W=W)


class MidBlock(nn.Module):
    """ResNet -> causal frame attention -> ResNet, at the lowest resolution (HunyuanVideoMidBlock3D)."""

    def __init__(self, channels, groups, attention, act="silu"):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, act) for _ in range(2)])
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
        ch, G, act = config.block_out_channels, config.norm_num_groups, config.act_fn
        self.conv_in = CausalConv3d(config.in_channels, ch[0])
        self.down_blocks = nn.ModuleList()
        for i, (ft, fs) in enumerate(resample_plan(config)):
            block = nn.Module()
            block.resnets = nn.ModuleList(ResnetBlock(ch[max(i - 1, 0)] if j == 0 else ch[i], ch[i], G, act)
                                          for j in range(config.layers_per_block))
            block.downsample = CausalConv3d(ch[i], ch[i], stride=(ft, fs, fs)) if (ft, fs) != (1, 1) else None
            self.down_blocks.append(block)
        self.mid_block = MidBlock(ch[-1], G, config.mid_block_add_attention, act)
        self.norm_out = GroupNorm(G, ch[-1], eps=EPS)  # SiLU whatever act_fn is: diffusers' conv_act
        self.conv_out = CausalConv3d(ch[-1], 2 * config.latent_channels)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            for resnet in block.resnets:
                x = resnet(x)
            if block.downsample is not None:
                x = block.downsample(x)
        x = self.mid_block(x)
        return self.conv_out(x, norm=self.norm_out)


class Decoder(nn.Module):
    """Latents (B, latent_channels, T, H, W) -> video (B, 3, 4 * (T - 1) + 1, 8 * H, 8 * W)."""

    def __init__(self, config):
        super().__init__()
        ch, G, act = config.block_out_channels[::-1], config.norm_num_groups, config.act_fn
        self.conv_in = CausalConv3d(config.latent_channels, ch[0])
        self.mid_block = MidBlock(ch[0], G, config.mid_block_add_attention, act)
        self.up_blocks = nn.ModuleList()
        for i, (ft, fs) in enumerate(resample_plan(config)):  # the decoder mirrors the encoder's levels
            block = nn.Module()
            block.resnets = nn.ModuleList(ResnetBlock(ch[max(i - 1, 0)] if j == 0 else ch[i], ch[i], G, act)
                                          for j in range(config.layers_per_block + 1))
            block.upsample = UpsampleConv3d(ch[i], (ft, fs)) if (ft, fs) != (1, 1) else None
            self.up_blocks.append(block)
        self.norm_out = GroupNorm(G, ch[-1], eps=EPS)  # SiLU whatever act_fn is: diffusers' conv_act
        self.conv_out = CausalConv3d(ch[-1], config.out_channels)

    def forward(self, z):
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            for resnet in block.resnets:
                x = resnet(x)
            if block.upsample is not None:
                x = block.upsample(x)
        return self.conv_out(x, norm=self.norm_out)
