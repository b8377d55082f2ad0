"""A dual- and a single-stream block at the real widths (3072 = 24 heads x 128, MLP 12288) in fp8 against bf16,
both measured against the float32 block on the same inputs (random weights, nn.Linear's initialisation).

What is measured: the relative L2 error of the block's update (output - input: what its weights compute; the residual
input itself passes through unchanged and would hide the error). The bound, derived from the format:
- E4M3 rounds a weight in its normal range to within half an ulp, |e| <= 2^-4 |w|, the error uniform over that
  interval, so its rms is at most 2^-4 / sqrt(3) of |w| (framepack_native/fp8.py);
- a Linear y = W x with such independent weight errors: E|dW x|^2 = sum e^2 W^2 x^2 <= (2^-4 / sqrt(3))^2 sum W^2 x^2
  = (2^-4 / sqrt(3))^2 E|W x|^2 for weights uncorrelated with x: each output's rms relative error <= 2^-4 / sqrt(3);
- a block's update passes through at most three quantised Linear layers in series (modulation -> q/k/v or MLP in ->
  output projection or MLP out), their errors adding independently to first order: <= sqrt(3) * 2^-4 / sqrt(3) = 2^-4;
- computing in bf16 adds the bf16 error (measured here on the same block), independent of it: sqrt(2^-8 + e_bf16^2).
Measured on this CPU (benchmarks/RESULTS.md): dual 0.049 (fp8, float32 compute), 0.059 (fp8, bf16 compute), bf16
0.033; single 0.047, 0.057, 0.033.
"""
import copy
import math

import pytest
import torch

from framepack_native.fp8 import fp8_layers, quantize_blocks
from framepack_native.models.transformer_blocks import DoubleStreamBlock, SingleStreamBlock

D, HEADS, HEAD_DIM, MLP = 3072, 24, 128, 12288
N_IMG, N_TXT = 96, 24
BOUND = 2.0 ** -4


class _Holder(torch.nn.Module):
    """The block where quantize_blocks looks for it."""

    def __init__(self, block):
        super().__init__()
        self.double_blocks = torch.nn.ModuleList([block])


def _inputs():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(1, N_IMG, D, generator=g), torch.randn(1, N_TXT, D, generator=g)
    vec = torch.nn.functional.silu(torch.randn(1, D, generator=g))
    angles = torch.rand(N_IMG, HEAD_DIM // 2, generator=g) * 2 * math.pi
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    return img, txt, vec, cos, sin


def _update(kind, block, dtype):
    """The block's output minus its input, float64, computed in dtype."""
    img, txt, vec, cos, sin = _inputs()
    with torch.no_grad():
        if kind == "double":
            out = block(img.to(dtype), txt.to(dtype), vec.to(dtype), cos.to(dtype), sin.to(dtype), None, "torch")
            return torch.cat(out, 1).double() - torch.cat((img, txt), 1).double()
        x = torch.cat((img, txt), 1)
        return block(x.to(dtype), vec.to(dtype), cos.to(dtype), sin.to(dtype), N_IMG, None, "torch").double() - x


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("kind", ["double", "single"])
def test_real_width_block_fp8_vs_bf16(kind):
    torch.manual_seed(0)
    block = (DoubleStreamBlock if kind == "double" else SingleStreamBlock)(D, HEADS, HEAD_DIM, MLP).eval()
    reference = _update(kind, block, torch.float32)
    bf16 = _update(kind, copy.deepcopy(block).bfloat16(), torch.bfloat16)
    holder = _Holder(block)
    quantize_blocks(holder)
    assert len(fp8_layers(holder)) == (10 if kind == "double" else 3)  # every Linear, modulation included
    fp8_fp32 = _update(kind, block, torch.float32)
    fp8_bf16 = _update(kind, block.bfloat16(), torch.bfloat16)
    e_bf16, e_fp8, e_fp8_bf16 = _rel(bf16, reference), _rel(fp8_fp32, reference), _rel(fp8_bf16, reference)
    print(f"{kind}: bf16 {e_bf16:.4f}, fp8 (float32 compute) {e_fp8:.4f}, fp8 (bf16 compute) {e_fp8_bf16:.4f}")
    assert 0.5 * BOUND / math.sqrt(3) < e_fp8 < BOUND  # fp8 is at work, within the derived bound
    assert e_fp8_bf16 < math.sqrt(BOUND ** 2 + e_bf16 ** 2)


class _LlamaHolder(torch.nn.Module):
    fp8_block_lists = ("layers",)

    def __init__(self, block):
        super().__init__()
        self.layers = torch.nn.ModuleList([block])


def test_real_width_llama_layer_fp8():
    """One decoder layer of Llama-3 8B (4096 wide, 32 / 8 heads, MLP 14336), float32 compute. Its update passes two
    quantised Linear layers in series per branch (qkv -> out, gate_up -> down): the bound sqrt(2) * 2^-4 / sqrt(3).
    Measured on this CPU: 0.039."""
    from framepack_native.models.llama import Block, LlamaConfig
    torch.manual_seed(0)
    config = LlamaConfig()
    block = Block(config).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 48, config.hidden_size, generator=g)
    angles = torch.rand(48, config.head_dim // 2, generator=g) * 2 * math.pi
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    with torch.no_grad():
        reference = block(x, cos, sin, None).double() - x
        quantize_blocks(_LlamaHolder(block))
        assert len(fp8_layers(block)) == 4
        err = _rel(block(x, cos, sin, None).double() - x, reference)
    print(f"llama layer: fp8 (float32 compute) {err:.4f}")
    assert 0.5 * BOUND / math.sqrt(3) < err < math.sqrt(2) * BOUND / math.sqrt(3)
