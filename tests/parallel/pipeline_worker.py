"""Run under torchrun (gloo, CPU): the demo pipeline's frames with enable_parallel() against the same pipeline in one
process: without guidance (every call split over all ranks) and with true CFG (with an even number of ranks the two
branches on two halves of them).

    torchrun --standalone --nproc-per-node N tests/parallel/pipeline_worker.py OUT.json

Rank 0 writes {"world", "cfg_parallel", "errors": [{case: relative L2 error, "calls": {case: [transformer calls,
of them split over ranks, of them running the blocks]}} per rank]} to OUT.json.
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framepack_native.caches import TeaCacheConfig  # noqa: E402
from framepack_native.demo import demo_image, demo_pipeline  # noqa: E402
from tests.reference.common import rel_l2  # noqa: E402

KW = dict(height=32, width=48, num_frames=9, latent_window_size=2, num_inference_steps=2, preset="diffusers")
CASES = {"sequence": {}, "cfg": dict(true_cfg_scale=3.0, negative_prompt="blurry"),
         "teacache": dict(cache=TeaCacheConfig(threshold=10.0), num_inference_steps=6)}  # skips agree across ranks


def run(pipe, case):
    return pipe(demo_image(), "waves", generator=torch.Generator().manual_seed(0), **{**KW, **CASES[case]})


def main(out):
    dist.init_process_group("gloo")
    pipe = demo_pipeline(seed=3, heads=12)  # divides by 2, 3 and 4 ranks
    single = {case: run(pipe, case) for case in CASES}
    pipe.enable_parallel()
    calls = []
    forward = pipe.transformer.forward
    pipe.transformer.forward = lambda *a, **k: (calls.append(pipe.transformer.sequence_parallel), forward(*a, **k))[1]
    runs = []  # the calls whose blocks ran (a cache skips them inside a call)
    blocks = pipe.transformer._blocks
    pipe.transformer._blocks = lambda *a, **k: (runs.append(1), blocks(*a, **k))[1]
    split, counts = {}, {}
    for case in CASES:
        calls.clear()
        runs.clear()
        split[case] = run(pipe, case)
        counts[case] = [len(calls), sum(sp is not None for sp in calls), len(runs)]  # calls, split, blocks ran
    errors = {case: rel_l2(split[case], single[case]) for case in CASES}
    errors["calls"] = counts
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, errors)
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps({"world": dist.get_world_size(), "cfg_parallel": pipe.parallel.cfg,
                                         "errors": gathered}))
    dist.barrier()  # no rank leaves while another still talks to rank 0's store
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
