"""The FramePack transformer: HunyuanVideo's dual/single-stream DiT with multi-scale history context packing.

Source: Zhang & Agrawala, "Packing Input Frame Context in Next-Frame Prediction Models for Video Generation"
(2025), on HunyuanVideo (Kong et al., 2024). Parity reference: diffusers' HunyuanVideoFramepackTransformer3DModel.
"""
import dataclasses
import functools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from framepack_native.files import MAX_LAYERS, MAX_WIDTH, check_range
from framepack_native.models.loading import load_pretrained
from framepack_native.models.transformer_blocks import DoubleStreamBlock, FinalLayer, SingleStreamBlock
from framepack_native.models.transformer_embed import (
    HistoryPatchEmbed,
    ImageProjection,
    MLPEmbedder,
    TokenRefiner,
    timestep_embedding,
)
from framepack_native.models.transformer_packing import HISTORY_POOL, rope_table


@dataclasses.dataclass(frozen=True)
class FramePackTransformerConfig:
    """Fields and defaults as in the FramePack checkpoints' config.json (FramePackI2V_HY, FramePack_F1)."""
    in_channels: int = 16
    out_channels: int = 16
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    num_layers: int = 20
    num_single_layers: int = 40
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 2
    patch_size_t: int = 1
    guidance_embeds: bool = True
    text_embed_dim: int = 4096
    pooled_projection_dim: int = 768
    image_proj_dim: int = 1152
    rope_theta: float = 256.0
    rope_axes_dim: tuple = (16, 56, 56)

    def __post_init__(self):
        widths = ("in_channels", "out_channels", "num_attention_heads", "attention_head_dim", "text_embed_dim",
                  "pooled_projection_dim", "image_proj_dim")
        for name in widths:
            check_range(name, getattr(self, name), 1, MAX_WIDTH)
        for name in ("num_layers", "num_single_layers", "num_refiner_layers"):
            check_range(name, getattr(self, name), 0, MAX_LAYERS)
        check_range("num_attention_heads x attention_head_dim", self.hidden_dim, 1, MAX_WIDTH)
        check_range("mlp_ratio", self.mlp_ratio, 0, above=True)
        check_range("rope_theta", self.rope_theta, 0, above=True)
        check_range("the MLP width int(hidden_dim x mlp_ratio)", int(self.hidden_dim * self.mlp_ratio), 1, MAX_WIDTH)
        if (self.patch_size, self.patch_size_t) != (2, 1):
            raise ValueError(f"FramePack's history embedder is built for patches (t, h, w) = (1, 2, 2), got "
                             f"patch_size_t={self.patch_size_t}, patch_size={self.patch_size}")
        if len(self.rope_axes_dim) != 3 or any(d < 2 or d % 2 for d in self.rope_axes_dim):
            raise ValueError(f"rope_axes_dim must be three even sizes (t, h, w), got {self.rope_axes_dim}")
        if sum(self.rope_axes_dim) != self.attention_head_dim:
            raise ValueError(f"rope_axes_dim {self.rope_axes_dim} sums to {sum(self.rope_axes_dim)}, "
                             f"attention_head_dim is {self.attention_head_dim}")

    def layer_counts(self):
        """{(field, key prefix): layers}, compared with a checkpoint's before the model is built."""
        return {("num_layers", "double_blocks"): self.num_layers, ("num_single_layers", "single_blocks"):
                self.num_single_layers, ("num_refiner_layers", "txt_in.blocks"): self.num_refiner_layers}

    @property
    def hidden_dim(self):
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def tiny(cls, **overrides):
        """A few-kB model for CPU tests: 2 heads x 16, 2 dual + 2 single blocks, 1 refiner layer."""
        fields = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2,
                      num_refiner_layers=1, text_embed_dim=24, pooled_projection_dim=12, image_proj_dim=20,
                      rope_axes_dim=(4, 6, 6))
        return cls(**{**fields, **overrides})


class FramePackTransformer(nn.Module):
    """Denoiser of one FramePack section: the noisy window attends to the packed clean history, image and text."""
    config_class = FramePackTransformerConfig
    kernel_backend = "auto"  # "auto" | "torch" | "triton", passed to every kernels.* call
    sequence_parallel = None  # a framepack_native.parallel.SequenceParallel: see enable_sequence_parallel
    fp8_block_lists = ("double_blocks", "single_blocks")  # where quantize="fp8" quantises (framepack_native.fp8)

    def __init__(self, config):
        super().__init__()
        self.config = config
        c, dim = config, config.hidden_dim
        mlp_dim = int(dim * c.mlp_ratio)
        patch = (c.patch_size_t, c.patch_size, c.patch_size)
        self.img_in = nn.Conv3d(c.in_channels, dim, patch, stride=patch)
        self.history_in = HistoryPatchEmbed(c.in_channels, dim)
        self.time_in = MLPEmbedder(256, dim)
        self.guidance_in = MLPEmbedder(256, dim) if c.guidance_embeds else None
        self.vector_in = MLPEmbedder(c.pooled_projection_dim, dim)
        # The refiner's MLP ratio is 4 whatever mlp_ratio says: diffusers builds HunyuanVideoTokenRefiner without it.
        self.txt_in = TokenRefiner(c.text_embed_dim, dim, c.num_attention_heads, c.num_refiner_layers, 4.0)
        self.image_in = ImageProjection(c.image_proj_dim, dim)
        head = (dim, c.num_attention_heads, c.attention_head_dim, mlp_dim)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(*head) for _ in range(c.num_layers))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(*head) for _ in range(c.num_single_layers))
        self.final_layer = FinalLayer(dim, c.patch_size_t * c.patch_size**2 * c.out_channels)

    @classmethod
    def from_pretrained(cls, path, dtype=torch.bfloat16, device="cuda", quantize=None, loras=(), fp32_modules=()):
        """Load a converted native folder (or a converted pipeline root) strictly, in eval mode.

        dtype: the compute dtype (fp8 layers dequantise to it). quantize="fp8": the Linear layers of the dual- and
        single-stream blocks quantised as they are read (a checkpoint converted with --dtype fp8 loads in fp8
        anyway). loras: LoRA files (paths or (path, strength)), merged; with fp8, into the float weights before
        they are quantised (framepack_native.fp8_loading). fp32_modules: modules loaded in float32 before the LoRAs
        merge, e.g. ("final_layer.linear",): the official app's float32 output head."""
        return load_pretrained(cls, path, dtype, device, quantize=quantize, loras=loras, fp32_modules=fp32_modules)

    def load_lora(self, path, strength=1.0, **options):
        """Apply a LoRA file (musubi / kohya, diffusers / PEFT or original HunyuanVideo keys); framepack_native.lora."""
        from framepack_native.lora import load_lora
        return load_lora(self, path, strength, **options)

    def unload_lora(self):
        """Remove every LoRA this model holds, restoring its weights bit for bit (framepack_native.lora)."""
        from framepack_native.lora import unload_lora
        return unload_lora(self)

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections,
                image_embeds, indices_latents, guidance=None, latents_clean=None, indices_latents_clean=None,
                latents_history_2x=None, indices_latents_history_2x=None, latents_history_4x=None,
                indices_latents_history_4x=None, cache=None, teacache=None):
        """Velocity of the noisy window; arguments as diffusers' HunyuanVideoFramepackTransformer3DModel.forward.

        hidden_states (B, C, T, H, W); timestep (B,) or scalar; encoder_hidden_states (B, Lt, text_dim) with
        encoder_attention_mask (B, Lt) (valid tokens first); pooled_projections (B, pooled_dim); image_embeds
        (B, Li, image_dim); indices_latents (T,) frame indices (None: 0..T-1); guidance (B,) or scalar
        (ignored without guidance_embeds); latents_clean (B, C, Tc, H, W) / latents_history_2x /
        latents_history_4x, each with its (T*,) indices or both None; cache: one run's cache state (a
        framepack_native.teacache.TeaCache or magcache.MagCache, made by framepack_native.caches) that may skip the
        blocks on this step (approximate), teacache= its older name. Returns (B, out_channels, T, H, W).
        """
        histories = {"1x": (latents_clean, indices_latents_clean), "2x": (latents_history_2x,
                     indices_latents_history_2x), "4x": (latents_history_4x, indices_latents_history_4x)}
        lengths = self._check_inputs(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                                     pooled_projections, image_embeds, indices_latents, guidance, histories)
        if teacache is not None:
            if cache is not None:
                raise ValueError("pass cache= or its older name teacache=, not both")
            cache = teacache
        if getattr(cache, "probes_first_block", False) and not self.double_blocks:
            raise ValueError(f"{type(cache).__name__} tests the first dual-stream block's input; this model has none")
        c, backend = self.config, self.kernel_backend
        B, _, T, H, W = hidden_states.shape
        h, w = H // c.patch_size, W // c.patch_size
        if indices_latents is None:
            indices_latents = torch.arange(T, device=hidden_states.device)
        timestep = timestep.expand(B)

        img, cos, sin = self._image_tokens(hidden_states, indices_latents, histories)
        vec = self._conditioning(timestep, guidance, pooled_projections)
        # Text cut to the longest valid length (batch 1: to its length, as the reference); batch > 1 masks keys.
        n_img, n_txt = img.shape[1], max(lengths)
        text_mask = encoder_attention_mask[:, :n_txt].bool() if min(lengths) < n_txt else None  # (B, Lt')
        txt = self.txt_in(encoder_hidden_states[:, :n_txt].to(vec.dtype), timestep, text_mask, backend)
        txt = torch.cat((self.image_in(image_embeds.to(vec.dtype)), txt), dim=1)  # (B, Lc, D): SigLIP + text
        kv_lens = None  # (B,): valid keys of the joint [image, SigLIP, text] sequence; the padding is at its end
        if text_mask is not None:
            kv_lens = text_mask.sum(dim=1, dtype=torch.int32) + (n_img + image_embeds.shape[1])  # on the device

        if self.sequence_parallel is not None:  # the same inputs on every rank: the blocks, the final layer and a
            self.sequence_parallel.broadcast_(img, txt, vec)  # cache's decisions must agree across the ranks
        window = slice(n_img - T * h * w, n_img)  # the noisy window's tokens, the only ones returned
        blocks = functools.partial(self._blocks, img, txt, vec, cos, sin, kv_lens)  # rows -> (B, R, D)
        if cache is None:
            x = blocks(window)
        else:  # the cache decides whether the blocks run (framepack_native.caches' protocol)
            probe = (functools.partial(self.double_blocks[0], img, txt, vec, cos, sin, kv_lens, backend, probe=True)
                     if self.double_blocks else None)  # TeaCache's test input
            x = cache.run(blocks, img, window, probe)

        out = self.final_layer(x, vec)  # (B, T*h*w, pt*p*p*C)
        return rearrange(out, "B (T h w) (C pt ph pw) -> B C (T pt) (h ph) (w pw)", T=T, h=h, w=w,
                         pt=c.patch_size_t, ph=c.patch_size, pw=c.patch_size)

    def _blocks(self, img, txt, vec, cos, sin, kv_lens, window):
        """The dual- then single-stream blocks; img (B, Li, D), txt (B, Lc, D) -> the window's rows (B, Lw, D)."""
        if self.sequence_parallel is not None:
            return self._blocks_parallel(img, txt, vec, cos, sin, kv_lens, window)
        backend, n_img = self.kernel_backend, img.shape[1]
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, cos, sin, kv_lens, backend)
        x = torch.cat((img, txt), dim=1)  # (B, Li+Lc, D)
        for i, block in enumerate(self.single_blocks):
            last = i == len(self.single_blocks) - 1
            x = block(x, vec, cos, sin, n_img, kv_lens, backend, rows=window if last else None)
        return x if self.single_blocks else x[:, window]

    def _blocks_parallel(self, img, txt, vec, cos, sin, kv_lens, window):
        """_blocks with the image tokens split over the ranks of self.sequence_parallel (framepack_native.parallel):
        each rank runs its 1 / P of them (padded), the text replicated; the window's rows gathered on every rank."""
        sp, backend, n_img = self.sequence_parallel, self.kernel_backend, img.shape[1]
        img, cos, sin = sp.split(img), sp.split(cos, dim=0, pad_value=1.0), sp.split(sin, dim=0, pad_value=0.0)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, cos, sin, kv_lens, backend, sp=sp, n_img_all=n_img)
        n_local = img.shape[1]
        x = torch.cat((img, txt), dim=1)
        for block in self.single_blocks:
            x = block(x, vec, cos, sin, n_local, kv_lens, backend, sp=sp, n_img_all=n_img)
        return sp.gather(x[:, :n_local], n_img)[:, window]

    def enable_sequence_parallel(self, group=None):
        """Split each forward's image tokens over the ranks of a torch.distributed group (None: the default one;
        framepack_native.parallel); every rank calls the model with the same inputs and gets the same output."""
        from framepack_native.parallel import SequenceParallel
        sp = SequenceParallel.from_group(group)
        sp.check_heads(self.config.num_attention_heads)
        self.sequence_parallel = sp if sp.world > 1 else None
        return self

    def _image_tokens(self, hidden_states, indices_latents, histories):
        """Tokens [4x | 2x | clean | noisy window] (B, Li, D) and their RoPE cos/sin (Li, Dh) float32.

        The 2x / 4x tables are padded and pooled like their latents (FramePack section 3.2).
        """
        c, dtype, device = self.config, self.img_in.weight.dtype, hidden_states.device
        h, w = hidden_states.shape[-2] // c.patch_size, hidden_states.shape[-1] // c.patch_size
        tokens = [rearrange(self.img_in(hidden_states.to(dtype)), "B D T h w -> B (T h w) D")]
        tables = [rope_table(indices_latents.to(device), h, w, c.rope_axes_dim, c.rope_theta)]
        for scale, (latents, indices) in histories.items():
            if latents is not None:
                tokens.insert(0, self.history_in(latents.to(dtype), scale))
                tables.insert(0, rope_table(indices.to(device), h, w, c.rope_axes_dim, c.rope_theta,
                                            pool=HISTORY_POOL[scale]))
        cos, sin = (torch.cat(t, dim=0) for t in zip(*tables))  # (Li, Dh)
        return torch.cat(tokens, dim=1), cos, sin  # (B, Li, D)

    def _conditioning(self, timestep, guidance, pooled_projections):
        """silu(timestep + guidance + pooled CLIP text embeddings) (B, D), the input of every adaLN."""
        dtype = self.img_in.weight.dtype
        vec = self.time_in(timestep_embedding(timestep).to(dtype))
        if self.guidance_in is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance.expand(timestep.shape[0])).to(dtype))
        return F.silu(vec + self.vector_in(pooled_projections.to(dtype)))  # (B, D)

    def _check_inputs(self, hidden_states, timestep, txt, txt_mask, pooled, image_embeds, indices, guidance,
                      histories):
        """Raise ValueError naming the culprit; return the valid text length of each batch row (list of int)."""
        c = self.config
        if hidden_states.ndim != 5 or hidden_states.shape[1] != c.in_channels:
            raise ValueError(f"hidden_states must be (B, {c.in_channels}, T, H, W), got {tuple(hidden_states.shape)}")
        B, _, T, H, W = hidden_states.shape
        if H % c.patch_size or W % c.patch_size:
            raise ValueError(f"latent height and width must be multiples of {c.patch_size}, got {H}x{W}")
        if timestep.shape not in ((), (B,)):
            raise ValueError(f"timestep must be a scalar or ({B},), got {tuple(timestep.shape)}")
        if c.guidance_embeds and (guidance is None or guidance.shape not in ((), (B,))):
            got = None if guidance is None else tuple(guidance.shape)
            raise ValueError(f"this model embeds guidance: pass guidance as a scalar or ({B},), got {got}")
        if txt.ndim != 3 or txt.shape[0] != B or txt.shape[2] != c.text_embed_dim:
            raise ValueError(f"encoder_hidden_states must be ({B}, L, {c.text_embed_dim}), got {tuple(txt.shape)}")
        if tuple(txt_mask.shape) != tuple(txt.shape[:2]):
            raise ValueError(f"encoder_attention_mask must be {tuple(txt.shape[:2])}, got {tuple(txt_mask.shape)}")
        if tuple(pooled.shape) != (B, c.pooled_projection_dim):
            raise ValueError(f"pooled_projections must be ({B}, {c.pooled_projection_dim}), got {tuple(pooled.shape)}")
        if image_embeds.ndim != 3 or image_embeds.shape[0] != B or image_embeds.shape[2] != c.image_proj_dim:
            raise ValueError(f"image_embeds must be ({B}, L, {c.image_proj_dim}), got {tuple(image_embeds.shape)}")
        if indices is not None and tuple(indices.shape) != (T,):
            raise ValueError(f"indices_latents must be ({T},) frame indices, got {tuple(indices.shape)}")
        for scale, (latents, idx) in histories.items():
            name = {"1x": "latents_clean", "2x": "latents_history_2x", "4x": "latents_history_4x"}[scale]
            if (latents is None) != (idx is None):
                raise ValueError(f"{name} and its indices must be given together (got only the "
                                 f"{'indices' if latents is None else 'latents'})")
            if latents is None:
                continue
            if latents.ndim != 5 or (*latents.shape[:2], *latents.shape[3:]) != (B, c.in_channels, H, W):
                raise ValueError(f"{name} must be ({B}, {c.in_channels}, frames, {H}, {W}), got {tuple(latents.shape)}")
            if tuple(idx.shape) != (latents.shape[2],):
                raise ValueError(f"indices of {name} must be ({latents.shape[2]},), got {tuple(idx.shape)}")
        # The reference reads the mask as lengths (valid tokens first); any other mask would be misread.
        valid = txt_mask != 0
        lengths = valid.sum(dim=1)
        prefix = torch.arange(valid.shape[1], device=valid.device)[None] < lengths[:, None]
        is_prefix = bool(torch.equal(prefix, valid))
        lengths = lengths.tolist()
        if not is_prefix or min(lengths) < 1:
            raise ValueError(f"encoder_attention_mask rows must be 1 for the first n >= 1 tokens and 0 after, "
                             f"got lengths {lengths}{'' if is_prefix else ' with holes'}")
        return lengths
