"""Sequence parallelism for the FramePack transformer: one section's image tokens split over the ranks of a
torch.distributed process group (DeepSpeed-Ulysses: Jacobs et al., 2023; xDiT's layout for HunyuanVideo).

Each rank holds a contiguous 1 / P of the image tokens (their count padded with zero tokens to a multiple of P;
the padding sits at the end, after the last rank's real tokens) and their RoPE cos / sin. The SigLIP + text tokens,
the conditioning and every weight are replicated. Per block:
  - projections, norms, RoPE and MLPs run on the local tokens (the text ones on every rank, identically);
  - attention exchanges q, k, v from (local tokens, all heads) to (all tokens, heads / P) with all_to_all_single,
    takes its heads of the replicated text q / k / v by slicing (no traffic), attends over
    [image, SigLIP + text, image padding] so that the valid keys stay a prefix (kv_lens: the padding is masked);
  - the image output goes back to (local tokens, all heads) with a second all_to_all, the text output is gathered
    over heads (all_gather) so every rank holds the same text again.
At the end the image tokens are gathered; the noisy window's rows are the output, on every rank.

Traffic per block and rank: 3 + 1 exchanges of (B, L / P, D) at (P - 1) / P crossing the wire, plus the text
gather (B, Lc, D) (P - 1) / P. Heads must divide by P (24 heads: 2, 3, 4, 6, 8, 12 or 24 ranks).
"""
import dataclasses

import torch
import torch.distributed as dist

import kernels


@dataclasses.dataclass
class SequenceParallel:
    """A process group splitting the image tokens: rank, world size, group (None: the default group)."""
    rank: int
    world: int
    group: object = None

    @classmethod
    def from_group(cls, group=None):
        """The sequence-parallel layout of `group` (None: the default group, which must be initialised)."""
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("sequence parallelism needs an initialised torch.distributed process group "
                             "(run under torchrun, or call torch.distributed.init_process_group)")
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def check_heads(self, num_heads):
        if num_heads % self.world:
            raise ValueError(f"sequence parallelism splits the {num_heads} attention heads over the ranks: "
                             f"{self.world} ranks do not divide them (use one of "
                             f"{[p for p in range(2, num_heads + 1) if num_heads % p == 0]})")

    def padded(self, n):
        """n tokens padded to a multiple of the world size."""
        return -(-n // self.world) * self.world

    def split(self, x, dim=1, pad_value=0.0):
        """This rank's chunk of x along dim, x padded with pad_value to a multiple of the world size first."""
        n = x.shape[dim]
        pad = self.padded(n) - n
        if pad:
            shape = list(x.shape)
            shape[dim] = pad
            x = torch.cat((x, x.new_full(shape, pad_value)), dim=dim)
        return x.chunk(self.world, dim=dim)[self.rank].contiguous()

    def gather(self, x, n, dim=1):
        """The chunks of every rank along dim, concatenated and cut to the first n."""
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim).narrow(dim, 0, n)

    def broadcast_(self, *tensors):
        """Overwrite each tensor with the group's first rank's (in place): the replicated inputs of the blocks stay
        bit-identical across ranks even where their encoders are not (GPU kernels need not be deterministic)."""
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        for t in tensors:
            dist.broadcast(t, src=src, group=self.group)

    def to_heads(self, x):
        """(B, Lloc, N, Dh) local tokens, all heads -> (B, P * Lloc, N / P, Dh) every token, this rank's heads."""
        B, L, N, Dh = x.shape
        send = x.reshape(B, L, self.world, N // self.world, Dh).permute(2, 0, 1, 3, 4).contiguous()
        recv = torch.empty_like(send)  # recv[i]: rank i's tokens, our heads
        dist.all_to_all_single(recv, send, group=self.group)
        return recv.permute(1, 0, 2, 3, 4).reshape(B, self.world * L, N // self.world, Dh)

    def to_tokens(self, y):
        """The inverse of to_heads: (B, P * Lloc, N / P, Dh) -> (B, Lloc, N, Dh)."""
        B, L, n, Dh = y.shape
        send = y.reshape(B, self.world, L // self.world, n, Dh).permute(1, 0, 2, 3, 4).contiguous()
        recv = torch.empty_like(send)  # recv[i]: our tokens, rank i's heads
        dist.all_to_all_single(recv, send, group=self.group)
        return recv.permute(1, 2, 0, 3, 4).reshape(B, L // self.world, self.world * n, Dh)

    def my_heads(self, x):
        """(B, L, N, Dh) replicated -> (B, L, N / P, Dh): this rank's heads."""
        n = x.shape[2] // self.world
        return x[:, :, self.rank * n:(self.rank + 1) * n]

    def gather_heads(self, x):
        """(B, L, N / P, Dh) this rank's heads -> (B, L, N, Dh) all of them."""
        return self.gather(x, x.shape[2] * self.world, dim=2)


def joint_attention(img_qkv, txt_qkv, kv_lens, backend, sp=None, n_img=None):
    """Attention over [image, SigLIP + text]: img_qkv / txt_qkv three (B, L*, N, Dh) each; kv_lens (B,) valid keys of
    the joint sequence (None: all). Returns (image output (B, Li, N, Dh), text output (B, Lc, N, Dh)).

    With sp (a SequenceParallel), the image tensors are this rank's tokens and n_img the real image tokens of all
    ranks together; the text is replicated and its output comes back the same on every rank."""
    if sp is None:
        n = img_qkv[0].shape[1]
        q, k, v = (torch.cat(pair, dim=1) for pair in zip(img_qkv, txt_qkv))
        out = kernels.attention(q, k, v, kv_lens=kv_lens, backend=backend)
        return out[:, :n], out[:, n:]
    B, n_txt = txt_qkv[0].shape[0], txt_qkv[0].shape[1]
    full = [sp.to_heads(t) for t in img_qkv]  # (B, Lpad, N / P, Dh)
    q, k, v = (torch.cat((f[:, :n_img], sp.my_heads(t), f[:, n_img:]), dim=1) for f, t in zip(full, txt_qkv))
    if kv_lens is None and full[0].shape[1] > n_img:  # the image padding must not be attended
        kv_lens = torch.full((B,), n_img + n_txt, dtype=torch.int32, device=q.device)
    out = kernels.attention(q, k, v, kv_lens=kv_lens, backend=backend)  # (B, Lpad + Lc, N / P, Dh)
    img = sp.to_tokens(torch.cat((out[:, :n_img], out[:, n_img + n_txt:]), dim=1))
    return img, sp.gather_heads(out[:, n_img:n_img + n_txt].contiguous())



class Parallel:
    """How a pipeline uses the ranks of a group (None: the default one): every transformer call split over all of
    them (sequence parallel); with cfg=True and an even number of ranks, the two classifier-free-guidance branches
    at once instead, the conditional one on the first half of the ranks and the negative one on the second, each
    half splitting its call over its ranks, the two outputs then swapped between paired ranks (r, r + P / 2)."""

    def __init__(self, group=None, cfg=True):
        self.sequence = SequenceParallel.from_group(group)
        world, rank = self.sequence.world, self.sequence.rank
        self.cfg = cfg and world % 2 == 0
        self.half = self.pair = None
        self.branch = 0
        if self.cfg:
            ranks = [dist.get_global_rank(group, i) if group is not None else i for i in range(world)]
            n = world // 2
            self.branch = rank // n
            # made by their members only, named by their ranks (local synchronisation): two pipelines on disjoint
            # groups of one job cannot clash, and ranks outside `group` need not take part
            half = dist.new_group(ranks[self.branch * n:(self.branch + 1) * n], use_local_synchronization=True)
            self.half = SequenceParallel(rank % n, n, half) if n > 1 else None
            self.pair = dist.new_group([ranks[rank % n], ranks[rank % n + n]], use_local_synchronization=True)

    def check(self, num_heads):
        self.sequence.check_heads(num_heads)
        if self.half is not None:
            self.half.check_heads(num_heads)

    def guided(self, transformer, conditional, negative):
        """(conditional output, negative output) of two calls of `transformer`, each run by its half of the ranks."""
        before = transformer.sequence_parallel
        transformer.sequence_parallel = self.half
        try:
            mine = (conditional if self.branch == 0 else negative)().contiguous()
        finally:
            transformer.sequence_parallel = before
        both = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(both, mine, group=self.pair)
        return both[0], both[1]
