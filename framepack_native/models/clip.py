"""CLIP text tower (ViT-L/14's, HunyuanVideo's text_encoder_2): pre-LN causal transformer + pooled end token.

The pre-LN encoder block here is shared with the SigLIP vision tower (models/siglip.py).
"""
import dataclasses

import torch
from einops import rearrange
from torch import nn

import kernels
from framepack_native.files import MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB, MAX_WIDTH, check_range
from framepack_native.models.activations import ACTIVATIONS, check_activation
from framepack_native.models.llama import causal_attention
from framepack_native.models.loading import load_pretrained


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Defaults: the ViT-L/14 text tower of HunyuanVideo's text_encoder_2 (transformers' CLIPTextConfig names)."""
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 2     # 2: legacy configs, pool at the highest token id; else the first eos_token_id

    def __post_init__(self):
        sizes = {"vocab_size": MAX_VOCAB, "hidden_size": MAX_WIDTH, "intermediate_size": MAX_WIDTH,
                 "num_hidden_layers": MAX_LAYERS, "num_attention_heads": MAX_WIDTH,
                 "max_position_embeddings": MAX_POSITIONS}
        for name, high in sizes.items():
            check_range(name, getattr(self, name), 1, high)
        check_range("layer_norm_eps", self.layer_norm_eps, 0, above=True)
        check_range("eos_token_id", self.eos_token_id, 0, self.vocab_size - 1)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        check_activation(self.hidden_act)

    def layer_counts(self):
        """{(field, key prefix): layers}, compared with a checkpoint's before the model is built."""
        return {("num_hidden_layers", "layers"): self.num_hidden_layers}

    @classmethod
    def tiny(cls, **overrides):
        """A 2-layer config for CPU tests."""
        fields = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=77)
        return cls(**{**fields, **overrides})


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), x + fc2(act(fc1(ln2(x)))). Biases everywhere.

    causal=True uses causal attention (CLIP text), else kernels.attention (SigLIP vision).
    """

    def __init__(self, dim, heads, mlp_dim, act, eps, causal):
        super().__init__()
        self.heads, self.causal, self.act = heads, causal, ACTIVATIONS[act]
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x):
        """x (B, L, D) -> (B, L, D)."""
        q, k, v = rearrange(self.qkv(self.norm1(x)), "B L (K N D) -> K B L N D", K=3, N=self.heads)
        a = causal_attention(q, k, v) if self.causal else kernels.attention(q, k, v)  # (B, L, N, Dh)
        x = x + self.out(rearrange(a, "B L N D -> B L (N D)"))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class CLIPTextEncoder(nn.Module):
    """CLIP text transformer (transformers' CLIPTextModel): last hidden state and pooled end-token state."""

    config_class = CLIPTextConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embedding = nn.Parameter(torch.zeros(c.max_position_embeddings, c.hidden_size))
        self.layers = nn.ModuleList(
            EncoderBlock(c.hidden_size, c.num_attention_heads, c.intermediate_size, c.hidden_act,
                         c.layer_norm_eps, causal=True)
            for _ in range(c.num_hidden_layers))
        self.final_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    @classmethod
    def from_pretrained(cls, path, dtype=torch.bfloat16, device="cuda"):
        return load_pretrained(cls, path, dtype, device)

    def forward(self, input_ids):
        """input_ids (B, L) int, L <= max_position_embeddings -> last_hidden_state (B, L, D), pooled (B, D).

        Pooling as transformers: eos_token_id == 2 (legacy configs) takes the position of the highest id
        (the end token is the largest in CLIP's vocabulary), otherwise the first position of eos_token_id.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        B, L = input_ids.shape
        if L > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {L} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        x = self.token_embedding(input_ids) + self.position_embedding[:L]  # (B, L, D)
        for layer in self.layers:
            x = layer(x)
        x = self.final_norm(x)
        ids = input_ids.to(torch.int32)
        if self.config.eos_token_id == 2:
            end = ids.argmax(dim=-1)
        else:
            end = (ids == self.config.eos_token_id).int().argmax(dim=-1)
        pooled = x[torch.arange(B, device=x.device), end]  # (B, D)
        return x, pooled
