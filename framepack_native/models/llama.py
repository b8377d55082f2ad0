"""Llama-3 decoder used as HunyuanVideo's text encoder (llava-llama-3-8b): hidden states, no LM head.

Grouped-query attention, gated MLP (SwiGLU by default), RMSNorm, half-split rotary embedding (transformers'
LlamaModel layout), with the rotary frequency schemes transformers' Llama accepts (modeling_rope_utils).
"""
import dataclasses
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from framepack_native.files import MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB, MAX_WIDTH, check_range
from framepack_native.models.activations import ACTIVATIONS, check_activation
from framepack_native.models.loading import load_pretrained

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope", "proportional")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Defaults: llava-llama-3-8b, HunyuanVideo's text_encoder (transformers' LlamaConfig names)."""
    vocab_size: int = 128320
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_type: str = "default"            # one of ROPE_TYPES; the rope_* fields below apply as noted
    rope_factor: float = 8.0              # linear, dynamic, llama3, yarn, proportional
    rope_low_freq_factor: float = 1.0     # llama3
    rope_high_freq_factor: float = 4.0    # llama3
    rope_original_max_position_embeddings: int = 8192  # the trained context: llama3, yarn, longrope, dynamic
    rope_attention_factor: float = 1.0    # yarn, longrope: cos and sin are scaled by it
    rope_beta_fast: float = 32.0          # yarn
    rope_beta_slow: float = 1.0           # yarn
    rope_truncate: bool = True            # yarn
    rope_short_factor: tuple = ()         # longrope: Dh/2 factors up to the trained context
    rope_long_factor: tuple = ()          # longrope: Dh/2 factors past it
    rope_partial_factor: float = 1.0      # proportional: the rotated fraction of each head
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"              # the gate's activation (transformers' ACT2FN name)

    def __post_init__(self):
        sizes = {"vocab_size": MAX_VOCAB, "hidden_size": MAX_WIDTH, "intermediate_size": MAX_WIDTH,
                 "num_hidden_layers": MAX_LAYERS, "num_attention_heads": MAX_WIDTH, "num_key_value_heads": MAX_WIDTH,
                 "head_dim": MAX_WIDTH, "rope_original_max_position_embeddings": MAX_POSITIONS}
        for name, high in sizes.items():
            check_range(name, getattr(self, name), 1, high)
        check_range("num_attention_heads x head_dim", self.num_attention_heads * self.head_dim, 1, MAX_WIDTH)
        for name in ("rms_norm_eps", "rope_theta", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                     "rope_attention_factor", "rope_beta_fast", "rope_beta_slow"):
            check_range(name, getattr(self, name), 0, above=True)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type {self.rope_type!r} is not supported; expected one of {ROPE_TYPES}")
        if self.rope_type == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
            raise ValueError(f"rope_high_freq_factor {self.rope_high_freq_factor} must exceed "
                             f"rope_low_freq_factor {self.rope_low_freq_factor}")
        for name in ("rope_short_factor", "rope_long_factor"):
            values = getattr(self, name)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"{name} must hold numbers, got {values}")
            if self.rope_type == "longrope" and len(values) != self.head_dim // 2:
                raise ValueError(f"{name} has {len(values)} entries, head_dim {self.head_dim} needs "
                                 f"{self.head_dim // 2}")
        if not 0 < self.rope_partial_factor <= 1:
            raise ValueError(f"rope_partial_factor must be in (0, 1], got {self.rope_partial_factor}")
        check_activation(self.hidden_act)

    def layer_counts(self):
        """{(field, key prefix): layers}, compared with a checkpoint's before the model is built."""
        return {("num_hidden_layers", "layers"): self.num_hidden_layers}

    @classmethod
    def tiny(cls, **overrides):
        """A 2-layer GQA config for CPU tests."""
        fields = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0)
        return cls(**{**fields, **overrides})


def _yarn_inv_freq(config, exponents, dim):
    """YaRN (arXiv:2309.00071): interpolated low frequencies, extrapolated high ones, a linear ramp between."""
    c, base = config, config.rope_theta
    pos_freqs = base ** exponents

    def correction_dim(rotations):
        return dim * math.log(c.rope_original_max_position_embeddings / (rotations * 2 * math.pi)) / (
            2 * math.log(base))

    low, high = correction_dim(c.rope_beta_fast), correction_dim(c.rope_beta_slow)
    if c.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoids a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    return 1.0 / (c.rope_factor * pos_freqs) * (1 - extrapolation) + 1.0 / pos_freqs * extrapolation


def rope_frequencies(config, length):
    """(inverse rotary frequencies (Dh/2,) float32 on the CPU, cos/sin scale) for positions 0..length-1.

    As transformers' rope init functions for config.rope_type (modeling_rope_utils). "dynamic" is computed
    for this length, as a fresh transformers model does; a used one keeps its longest call's frequencies for
    later calls that are shorter but still past the trained context.
    """
    c, dim = config, config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim  # (Dh/2,)
    if c.rope_type == "proportional":  # only the first rope_partial_factor of each head rotates
        angles = int(c.rope_partial_factor * dim // 2)
        inv_freq = 1.0 / (c.rope_theta ** exponents[:angles])
        return torch.cat((inv_freq, torch.zeros(dim // 2 - angles))) / c.rope_factor, 1.0
    if c.rope_type == "dynamic" and length > c.rope_original_max_position_embeddings:
        # NTK-aware: the base grows with the length past the trained context (float32, as transformers)
        n = torch.tensor(length)
        grow = (c.rope_factor * n / c.rope_original_max_position_embeddings - (c.rope_factor - 1)) ** (
            dim / (dim - 2))
        return 1.0 / ((c.rope_theta * grow) ** exponents), 1.0
    if c.rope_type == "longrope":
        long = length > c.rope_original_max_position_embeddings
        factors = torch.tensor(c.rope_long_factor if long else c.rope_short_factor, dtype=torch.float32)
        return 1.0 / (factors * c.rope_theta ** exponents), c.rope_attention_factor
    inv_freq = 1.0 / (c.rope_theta ** exponents)
    if c.rope_type == "linear":
        return inv_freq / c.rope_factor, 1.0
    if c.rope_type == "yarn":
        return _yarn_inv_freq(c, exponents, dim), c.rope_attention_factor
    if c.rope_type == "default" or c.rope_type == "dynamic":
        return inv_freq, 1.0
    # llama3 (Llama 3.1): long wavelengths divided by `factor`, short ones kept, a linear blend in between.
    old_len = c.rope_original_max_position_embeddings
    low_wavelen = old_len / c.rope_low_freq_factor
    high_wavelen = old_len / c.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / c.rope_factor, inv_freq)
    smooth = (old_len / wavelen - c.rope_low_freq_factor) / (c.rope_high_freq_factor - c.rope_low_freq_factor)
    blended = (1 - smooth) * scaled / c.rope_factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled), 1.0


def rope_half(x, cos, sin):
    """Half-split rotary embedding (dims i and i + Dh/2 rotate together); x (B, L, N, Dh), cos/sin (L, Dh) fp32.

    Not kernels.apply_rope: that one rotates interleaved pairs (2i, 2i+1), HunyuanVideo's layout.
    """
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)  # (B, L, N, Dh/2) each
    rotated = torch.cat((-x2, x1), dim=-1)  # (B, L, N, Dh)
    return (xf * cos[:, None, :] + rotated * sin[:, None, :]).to(x.dtype)


def causal_attention(q, k, v, kv_mask=None):
    """Causal softmax attention with optional key padding (torch SDPA: kernels.attention has no causal mode).

    q (B, L, N, Dh), k/v (B, L, Nkv, Dh) with N a multiple of Nkv (grouped-query); kv_mask bool (B, L),
    True = attend. Query rows left with no key (left padding) attend to all earlier keys instead of NaN.
    Returns (B, L, N, Dh).
    """
    B, L, N, _ = q.shape
    if k.shape[2] != N:
        k = k.repeat_interleave(N // k.shape[2], dim=2)  # (B, L, N, Dh)
        v = v.repeat_interleave(N // v.shape[2], dim=2)  # (B, L, N, Dh)
    q, k, v = (rearrange(t, "B L N D -> B N L D") for t in (q, k, v))
    if kv_mask is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        mask = causal[None] & kv_mask[:, None, :]  # (B, L, L)
        mask = mask | (causal[None] & ~mask.any(-1, keepdim=True))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])  # (B, N, L, Dh)
    return rearrange(out, "B N L D -> B L N D")


class RMSNorm(nn.Module):
    """RMSNorm in float32, scaled by the weight after casting back (transformers' LlamaRMSNorm order)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with a fused qkv projection."""

    def __init__(self, config):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.qkv = nn.Linear(config.hidden_size, (self.n_heads + 2 * self.n_kv) * self.head_dim,
                             bias=config.attention_bias)
        self.out = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=config.attention_bias)

    def forward(self, x, cos, sin, kv_mask):
        """x (B, L, D), cos/sin (L, Dh), kv_mask bool (B, L) or None -> (B, L, D)."""
        q, k, v = self.qkv(x).split([self.n_heads * self.head_dim, self.n_kv * self.head_dim,
                                     self.n_kv * self.head_dim], dim=-1)  # (B, L, N*Dh), 2 x (B, L, Nkv*Dh)
        q = rearrange(q, "B L (N D) -> B L N D", D=self.head_dim)
        k = rearrange(k, "B L (N D) -> B L N D", D=self.head_dim)
        v = rearrange(v, "B L (N D) -> B L N D", D=self.head_dim)
        out = causal_attention(rope_half(q, cos, sin), rope_half(k, cos, sin), v, kv_mask)  # (B, L, N, Dh)
        return self.out(rearrange(out, "B L N D -> B L (N D)"))


class MLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x)), SwiGLU for act = silu; gate and up fused in one projection."""

    def __init__(self, config):
        super().__init__()
        self.act = ACTIVATIONS[config.hidden_act]
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, L, F) each
        return self.down(self.act(gate) * up)


class Block(nn.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv_mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, kv_mask)
        return x + self.mlp(self.mlp_norm(x))


class LlamaTextEncoder(nn.Module):
    """Llama decoder stack returning one of its hidden states (transformers' LlamaModel, output_hidden_states)."""

    config_class = LlamaConfig
    fp8_block_lists = ("layers",)  # where quantize="fp8" quantises (framepack_native.fp8)

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self._rope_cache = {}

    @classmethod
    def from_pretrained(cls, path, dtype=torch.bfloat16, device="cuda", quantize=None):
        """Load a converted folder; quantize="fp8": every Linear of the decoder layers in block-scaled fp8, quantised
        as it is read (musubi-tuner's --fp8_llm; framepack_native.fp8), the embedding and norms as they are."""
        return load_pretrained(cls, path, dtype, device, quantize=quantize)

    def rope(self, length, device):
        """cos, sin (L, Dh) float32 for positions 0..L-1, cached per device and length."""
        key = (str(device), length)
        if key not in self._rope_cache:
            inv_freq, scale = rope_frequencies(self.config, length)
            freqs = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None]
            emb = torch.cat((freqs, freqs), dim=-1)  # (L, Dh)
            self._rope_cache = {key: ((emb.cos() * scale).to(device), (emb.sin() * scale).to(device))}
        return self._rope_cache[key]

    def drop_layers_after(self, hidden_state_index):
        """Free the layers (and the final norm) that hidden_state_index never runs: FramePack reads index -3,
        so the last 2 of Llama-3's 32 layers (~0.8 GiB of bf16) go. Later calls must not ask past it."""
        n = self.config.num_hidden_layers
        self._check_index(hidden_state_index)
        depth = hidden_state_index % (n + 1)
        if depth < n:
            del self.layers[depth:]
            self.norm = None
        return self

    def _check_index(self, hidden_state_index):
        n = self.config.num_hidden_layers
        if not -(n + 1) <= hidden_state_index <= n:
            raise ValueError(f"hidden_state_index {hidden_state_index} out of range for {n} layers "
                             f"(valid: {-(n + 1)}..{n})")
        depth = hidden_state_index % (n + 1)
        if depth > len(self.layers) or (depth == n and self.norm is None):
            raise ValueError(f"hidden_state_index {hidden_state_index} needs layers this encoder dropped "
                             f"(it keeps {len(self.layers)} of {n}; see drop_layers_after)")

    def forward(self, input_ids, attention_mask=None, hidden_state_index=-1):
        """input_ids (B, L) int, attention_mask (B, L) 1 = token (right padding) -> (B, L, D).

        Returns what transformers' hidden_states[hidden_state_index] holds: index 0 the embeddings, k the
        output of layer k, the last one (-1) after the final norm. Layers past the index are not run.
        """
        n = self.config.num_hidden_layers
        self._check_index(hidden_state_index)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                             f"{tuple(input_ids.shape)}")
        depth = hidden_state_index % (n + 1)
        kv_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            kv_mask = attention_mask.to(device=input_ids.device, dtype=torch.bool)
        x = self.embed(input_ids)  # (B, L, D)
        cos, sin = self.rope(input_ids.shape[1], x.device)
        for layer in self.layers[:depth]:
            x = layer(x, cos, sin, kv_mask)
        return self.norm(x) if depth == n else x
