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


def _plain(value):
    """value if it is what the command line gives (strings, numbers, flags, lists of them), else None."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)) and all(_plain(v) is not None or v is None for v in value):
        return [_plain(v) for v in value]
    return None


def _fingerprint(args):
    """What must be the same on every rank: the command-line values but the device (what was read from them, images
    and videos, is compared through their paths), and the model's manifest hash."""
    from pathlib import Path

    from framepack_native.files import sha256
    said = {k: repr(_plain(v)) for k, v in sorted(vars(args).items())
            if k != "device" and (_plain(v) is not None or v is None)}
    if args.model and (Path(args.model) / "manifest.json").is_file():
        said["model manifest.json"] = sha256(Path(args.model) / "manifest.json")
    return said


def _short(text, limit=60):
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
        visible = torch.cuda.device_count()  # 1 when the launcher gives each rank its own CUDA_VISIBLE_DEVICES
        if visible == 0 or (visible > 1 and local >= visible):
            raise UsageError(f"rank {os.environ.get('RANK', '?')} (LOCAL_RANK {local}) sees {visible} GPUs: one each "
                             "is needed (or --device cpu for gloo)")
        args.device = f"cuda:{local if visible > 1 else 0}"
        torch.cuda.set_device(args.device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    said = [None] * dist.get_world_size()
    dist.all_gather_object(said, _fingerprint(args))
    for r, other in enumerate(said):
        differs = sorted(k for k in set(other) | set(said[0]) if other.get(k) != said[0].get(k))
        if differs:  # every rank sees the same lists: all refuse, leaving the group together (rank 0 holds its store)
            dist.barrier()
            dist.destroy_process_group()
            key = differs[0]
            raise UsageError(f"rank {r} was started with a different {key!r} than rank 0 "
                             f"({_short(str(other.get(key)))} vs {_short(str(said[0].get(key)))}): every rank needs "
                             "the same command and model")
    if rank:
        sys.stdout = _ErrorsOnly(sys.__stderr__)
        sys.stderr = _ErrorsOnly(sys.__stderr__)
    return rank


def finish():
    """Leave the group together: no rank tears it down (rank 0 holds its store) while another still uses it."""
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
