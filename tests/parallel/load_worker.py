"""Run under torchrun (gloo, CPU): FramePackPipeline.from_pretrained picks the process group up, or not with
parallel=False.

    torchrun --standalone --nproc-per-node N tests/parallel/load_worker.py OUT.json MODEL_DIR
"""
import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framepack_native import FramePackPipeline  # noqa: E402


def main(out, model):
    dist.init_process_group("gloo")
    picked = FramePackPipeline.from_pretrained(model, device="cpu")
    alone = FramePackPipeline.from_pretrained(model, device="cpu", parallel=False)
    said = {"picked": picked.parallel is not None and picked.transformer.sequence_parallel is not None,
            "world": picked.parallel.sequence.world if picked.parallel else 1,
            "alone": alone.parallel is None and alone.transformer.sequence_parallel is None}
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(said))
    dist.barrier()  # no rank leaves while another still talks to rank 0's store
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
