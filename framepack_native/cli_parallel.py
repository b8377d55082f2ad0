"""`framepack-native generate` on several ranks: `torchrun --nproc-per-node N -m framepack_native generate ...`.

Each rank loads the model (on GPU LOCAL_RANK with CUDA, NCCL; on the CPU with gloo) and runs the same pipeline
with enable_parallel(): every transformer call split over the ranks, true CFG's two branches on two halves of them
(framepack_native.parallel). Rank 0 writes --out (after every section, as in one process) and --preview and prints;
the other ranks print only their error lines. Refused with one line before any model loads: ranks started with
different arguments or on different model folders (compared by manifest.json's SHA-256), --resume (the run state
is not kept across ranks yet: a stopped run keeps the mp4 of its finished sections, and starts again) and
--one-frame (one small step: nothing to split).
"""
import io
import os
import sys

from framepack_native.cli_checks import UsageError


def world_size():
    """torchrun's WORLD_SIZE (1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of ranks") from None


class _ErrorsOnly(io.TextIOBase):
    """A text stream passing on only the lines that start with "error" (what the other ranks may print)."""

    def __init__(self, stream):
        self.stream, self.line = stream, ""

    def write(self, text):
        self.line += text
        *lines, self.line = self.line.split("\n")
        for line in lines:
            if line.startswith("error"):
                self.stream.write(line + "\n")
                self.stream.flush()
        return len(text)

    def flush(self):
        self.stream.flush()


def _fingerprint(args):
    """What must be the same on every rank: the parsed arguments but the device, and the model's manifest hash."""
    from pathlib import Path

    from framepack_native.files import sha256
    said = {k: repr(v) for k, v in sorted(vars(args).items()) if k not in ("device", "func")}
    if args.model and (Path(args.model) / "manifest.json").is_file():
        said["model manifest.json"] = sha256(Path(args.model) / "manifest.json")
    return said


def start(args):
    """Join torchrun's ranks when WORLD_SIZE > 1 (else None): the process group, this rank's device, the same
    command on every rank, quiet ranks past 0. Returns this rank's number."""
    world = world_size()
    if world == 1:
        return None
    if args.one_frame is not None:
        raise UsageError("--one-frame is one small step: run it in one process, not under torchrun")
    if args.resume:
        raise UsageError("--resume does not work on several ranks yet: run the command again without it (the mp4 "
                         "of the finished sections is in --out)")
    import torch
    import torch.distributed as dist
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = args.device.startswith("cuda")
    if cuda:
        args.device = f"cuda:{local}"
        torch.cuda.set_device(args.device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    said = [None] * dist.get_world_size()
    dist.all_gather_object(said, _fingerprint(args))
    for r, other in enumerate(said):
        differs = sorted(k for k in set(other) | set(said[0]) if other.get(k) != said[0].get(k))
        if differs:
            raise UsageError(f"rank {r} was started with a different {differs[0]!r} than rank 0 ({other.get(differs[0])} "
                             f"vs {said[0].get(differs[0])}): every rank needs the same command and model")
    if rank:
        sys.stdout = _ErrorsOnly(sys.__stderr__)
        sys.stderr = _ErrorsOnly(sys.__stderr__)
    return rank


def finish():
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
