"""The decoded video, section by section, in constant device memory: finished frames live on the host, and only the
frames the next soft append cross-fades (Section.overlap of them, on the join side) stay on the device as decoded.

Joining gives exactly the frames Section.join_pixels would give on the whole video (the same soft_append on the same
values), so the output does not depend on where the frames are kept.
"""
import ctypes
import ctypes.util

import torch

from framepack_native.sections import soft_append

STORAGE = ("float", "uint8")


def to_unit(video):
    """Decoded frames (B, 3, F, H, W) in [-1, 1] -> float32 (B, F, 3, H, W) in [0, 1], on the same device."""
    return (video.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)


def to_uint8(unit):
    """(B, F, 3, H, W) float in [0, 1] -> uint8, rounded (as video.to_uint8_frames and diffusers' postprocess)."""
    return unit.mul(255).round().to(torch.uint8)


class FrameStore:
    """The video so far: host chunks (B, f, 3, H, W) in `storage` ("float": float32 in [0, 1], exact; "uint8")
    in video order, plus the device edge (B, 3, overlap, H, W), the decoded frames the next join blends."""

    def __init__(self, storage="float"):
        if storage not in STORAGE:
            raise ValueError(f"storage must be one of {STORAGE}, got {storage!r}")
        self.storage, self.chunks, self.edge, self.side = storage, [], None, None

    def _host(self, video):
        unit = to_unit(video)
        return (to_uint8(unit) if self.storage == "uint8" else unit).cpu()  # uint8 crosses to the host: 4x less

    def join(self, section, current, edge_frames=None):
        """Add a section's decoded frames (B, 3, F', H, W) on its join side (Section.join_pixels), keeping the
        newest edge_frames (default: section.overlap, what the next section of the same plan blends) on the device;
        returns the host chunk it added (B, f, 3, H, W), or None when every frame so far is still in the edge."""
        front = section.join == "front"
        if self.edge is not None:
            o = section.overlap
            current = soft_append(current, self.edge, o) if front else soft_append(self.edge, current, o)
            # the old edge is inside `current` now (blended), so current replaces it
        overlap = section.overlap if edge_frames is None else edge_frames
        if current.shape[2] <= overlap:  # too short to spare an edge (the first of short sections): all on device
            self.edge, self.side = current, section.join
            return None
        if front:
            self.edge, rest = current[:, :, :overlap], current[:, :, overlap:]
            self.chunks.insert(0, self._host(rest))
        else:
            rest, self.edge = current[:, :, :current.shape[2] - overlap], current[:, :, current.shape[2] - overlap:]
            self.chunks.append(self._host(rest))
        self.edge, self.side = self.edge.clone(), section.join  # not a view keeping the whole section alive
        return self.chunks[0] if front else self.chunks[-1]

    @classmethod
    def restore(cls, storage, chunks, edge, side):
        """A store holding `chunks` (each with the side it joined, in the order they were added: [(chunk, side)]),
        the device `edge` and its `side`, as join left it (framepack_native.run_state saves these)."""
        store = cls(storage)
        for chunk, chunk_side in chunks:
            store.chunks.insert(0, chunk) if chunk_side == "front" else store.chunks.append(chunk)
        store.edge, store.side = edge, side
        return store

    @property
    def num_frames(self):
        return sum(c.shape[1] for c in self.chunks) + (0 if self.edge is None else self.edge.shape[2])

    def frames(self, keep=None):
        """The whole video so far (B, F, 3, H, W) on the CPU in the storage dtype; `keep`: its first frames only."""
        if self.edge is None:
            raise ValueError("no frames yet")
        edge = self._host(self.edge)
        parts = [edge, *self.chunks] if self.side == "front" else [*self.chunks, edge]
        video = torch.cat(parts, dim=1)
        return video if keep is None else video[:, :keep]


_LIBC = []


def trim_host_heap():
    """Give the host memory freed since the last call back to the system (glibc's malloc_trim; elsewhere nothing).

    A section's float intermediates (VAE activations, the float frames before uint8) are freed when it ends, but glibc
    keeps most of such freed heap for reuse, so without this the resident set of a long run grows ~3.5x faster than
    the frames it keeps (measured: 55 MiB for 15 MiB of frames over a 30 s demo run; with it, 19.5 MiB).
    """
    if not _LIBC:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            _LIBC.append(libc if libc is not None and hasattr(libc, "malloc_trim") else None)
        except OSError:
            _LIBC.append(None)
    if _LIBC[0] is not None:
        _LIBC[0].malloc_trim(0)
