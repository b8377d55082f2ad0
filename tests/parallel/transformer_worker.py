"""Run under torchrun (gloo, CPU): the tiny transformer's output with its image tokens split over the ranks against the
same model in one process, at batch 1 and batch 2 with different text lengths, both sampling layouts.

    torchrun --standalone --nproc-per-node N tests/parallel/transformer_worker.py OUT.json

Rank 0 writes {case: relative L2 error} to OUT.json.
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framepack_native.demo import _randomize_  # noqa: E402
from framepack_native.models.transformer import FramePackTransformer, FramePackTransformerConfig  # noqa: E402
from tests.reference.common import rel_l2  # noqa: E402
from tests.reference.transformer import make_inputs  # noqa: E402

CONFIG = FramePackTransformerConfig.tiny(num_attention_heads=6, attention_head_dim=8, rope_axes_dim=(2, 2, 4))
SIZES = dict(in_channels=16, text_embed_dim=CONFIG.text_embed_dim, pooled_projection_dim=CONFIG.pooled_projection_dim,
             image_proj_dim=CONFIG.image_proj_dim)
CASES = {  # image tokens: 3 frames x 3 x 5 = 45 + the histories, not a multiple of 2 or 3 (padding is exercised)
    "b1": dict(text_lens=[5], height=6, width=10),
    "b2-text-lengths": dict(text_lens=[7, 3], height=6, width=10, padding=2),
    "b2-vanilla": dict(text_lens=[4, 9], sampling="vanilla", height=10, width=6),
}


def main(out):
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = _randomize_(FramePackTransformer(CONFIG), torch.Generator().manual_seed(1)).eval()
    inputs = {name: make_inputs(SIZES, seed=i, **kw) for i, (name, kw) in enumerate(CASES.items())}
    with torch.no_grad():
        single = {name: model(**x) for name, x in inputs.items()}
        model.enable_sequence_parallel()
        sp, tokens = model.sequence_parallel, []
        split_tokens = sp.split
        sp.split = lambda x, dim=1, **kw: (tokens.append(x.shape[dim]) if dim == 1 else None, split_tokens(
            x, dim, **kw))[1]  # records the image tokens of each call
        split = {name: model(**x) for name, x in inputs.items()}
    errors = {name: rel_l2(split[name], single[name]) for name in CASES}
    errors["image_tokens"] = tokens
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, errors)  # every rank's output must match, not only rank 0's
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps({"world": dist.get_world_size(), "errors": gathered}))
    dist.barrier()  # no rank leaves while another still talks to rank 0's store
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
