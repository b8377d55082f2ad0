"""Resumable runs: after every finished section the run's state goes to a folder, so that a stopped or crashed run
continues after its last finished section and gives the video a run never interrupted would have given.

The folder holds
    state.json                  what the run is (its fingerprint: arguments, pictures, seed, weights) and how far it got
    section-NNNN.safetensors    per finished section: the frames it moved to the host and the latents it spilled there
    tail-NNNN.safetensors       after the newest section only: the device-side history, the frame store's edge and the
                                random generators' states
Every file is written to a temporary name and renamed; state.json last, so a crash at any moment leaves the state of
the last section whose state.json landed (files of a later, unfinished section are ignored and overwritten).
Nothing is unpickled: tensors are safetensors, the rest JSON.
"""
import contextlib
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from framepack_native.files import write_text_atomic
from framepack_native.image import load_image
from framepack_native.weights import save_safetensors

STATE_FILE = "state.json"
FORMAT = "framepack_native-run"
VERSION = 1


_NAMES = re.compile(r"state\.json|(section|tail)-\d{4,}\.safetensors|\..+\.tmp")  # what a state writes


def _ours(name):
    """Whether a file name is one a run state writes (its files and their temporaries)."""
    return _NAMES.fullmatch(name) is not None


class ResumeError(ValueError):
    """A run state that cannot be resumed: another run's (the message names what differs), damaged, or missing."""


def tensor_digest(tensor):
    """sha256 (hex) of a tensor's dtype, shape and values, e.g. of an input picture."""
    t = tensor.detach().contiguous().cpu()
    h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def picture_digest(image):
    """sha256 of an input picture as load_image reads it (a path, PIL image, array or tensor)."""
    image = load_image(image)
    return tensor_digest(torch.from_numpy(np.array(image)) if isinstance(image, PIL.Image.Image) else image)


def weights_digest(modules, samples=64):
    """sha256 (hex) of the names, shapes and dtypes of every parameter and buffer of `modules` ({name: module}) and
    of `samples` values spread evenly over each: another checkpoint, other dtypes or a merged LoRA change it (a LoRA
    delta B @ A touches every element of its weight). Cheap enough for the 13B model: one gather per tensor."""
    h = hashlib.sha256()
    for prefix, module in modules.items():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            h.update(f"{prefix}.{name} {t.dtype} {tuple(t.shape)};".encode())
            flat = t.detach().reshape(-1)
            if flat.numel():
                k = min(samples, flat.numel())  # integer positions, the same on every device
                idx = (torch.arange(k) * (flat.numel() - 1) // max(k - 1, 1)).to(flat.device)
                h.update(flat[idx].float().cpu().numpy().tobytes())
    return h.hexdigest()


def vae_tiling(vae):
    """The VAE's tiling settings (None when off): they change the decoded frames."""
    if not vae.use_tiling:
        return None
    return {k: v for k, v in sorted(vars(vae).items()) if k.startswith("tile_")}


def _generators(generator, device):
    """The generators whose states carry the run's randomness: the given one(s), or torch's default for `device`."""
    if isinstance(generator, list):
        return generator
    if generator is not None:
        return [generator]
    device = torch.device(device)
    if device.type == "cuda":
        return [torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]]
    return [torch.default_generator]


def seed_digest(generator, device):
    """sha256 (hex) of the generators' states at the start of a run (the seed, as far as the run can tell)."""
    return hashlib.sha256(b"".join(g.get_state().numpy().tobytes() for g in _generators(generator, device))).hexdigest()


def _shown(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


DIGESTS = {"image": "another picture", "last_image": "another last picture", "seed": "another seed or generator",
           "model": "other weights"}


def differences(saved, now):
    """What differs between two fingerprints, as short phrases ("prompt 'a' -> 'b'", "model (other weights)")."""
    said = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if a != b:
            said.append(f"{key} ({DIGESTS[key]})" if key in DIGESTS else f"{key} {_shown(a)} -> {_shown(b)}")
    return said


class RunState:
    """The state folder of one run. resume=False: a new run (an old state in the folder is replaced when this run's
    first section lands, not before); resume=True: the folder must hold a state of the same fingerprint, which
    `restore` then reads. `done` counts the finished sections."""

    def __init__(self, folder, fingerprint, sections, resume=False):
        self.folder, self.sections = Path(folder), sections
        try:  # as it reads back from state.json (tuples become lists), checked before any section runs
            self.fingerprint = json.loads(json.dumps(fingerprint))
        except (TypeError, ValueError) as e:
            raise ValueError(f"the run's arguments cannot be saved with its state ({e}); pass plain numbers, "
                             "strings and lists") from None
        self.done, self.generated, self.joins, self._fresh = 0, 0, [], not resume
        if self.folder.exists() and not self.folder.is_dir():
            raise ResumeError(f"{self.folder}: not a folder (the run state's folder)")
        if resume:
            self._read()
        elif self.folder.is_dir() and any(p for p in self.folder.iterdir() if not _ours(p.name)):
            raise ResumeError(f"{self.folder}: holds files that are not a run state; name an empty or new folder for "
                              "state_dir")

    def remove(self):
        """Delete the state's files (only those a run state writes) and the folder, if it is empty then."""
        if not self.folder.is_dir():
            return
        for p in self.folder.iterdir():
            if _ours(p.name) and p.is_file():
                p.unlink()
        with contextlib.suppress(OSError):
            self.folder.rmdir()

    @property
    def complete(self):
        return self.done == self.sections

    def _read(self):
        path = self.folder / STATE_FILE
        if not path.is_file():
            raise ResumeError(f"{self.folder}: no saved run to resume (no {STATE_FILE}); start the run without resuming")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            ok = (isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("version") == VERSION
                  and isinstance(doc.get("fingerprint"), dict) and isinstance(doc.get("done"), int)
                  and isinstance(doc.get("generated"), int) and isinstance(doc.get("joins"), list)
                  and len(doc["joins"]) == doc["done"] and all(j in ("front", "back") for j in doc["joins"]))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok:
            raise ResumeError(f"{path}: not a run state of version {VERSION} (damaged?); delete {self.folder} to start "
                              "again")
        saved = dict(doc["fingerprint"])
        if "sections" not in self.fingerprint and saved.get("sampling_type") == "vanilla":
            saved.pop("sections", None)  # a vanilla state of before lengths could grow: the same run
        differ = differences(saved, self.fingerprint)
        if differ:
            raise ResumeError(f"{self.folder}: the saved run was made with other settings: {', '.join(differ)}; "
                              "resume with the same ones, or start a new run")
        if doc["done"] > self.sections >= 1 and "sections" not in self.fingerprint:
            raise ResumeError(f"{self.folder}: the saved run has {doc['done']} finished sections, more than the "
                              f"{self.sections} of this length; resume with the same or a longer length")
        if not 1 <= doc["done"] <= self.sections:
            raise ResumeError(f"{path}: {doc['done']} finished sections of {self.sections} (damaged?)")
        self.done, self.generated, self.joins = doc["done"], doc["generated"], doc["joins"]

    def _load(self, name):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        path = self.folder / name
        try:
            return load_file(path)
        except (OSError, SafetensorError) as e:
            raise ResumeError(f"{path}: unreadable run state ({e}); delete {self.folder} to start again") from None

    def restore(self, generator, device):
        """-> (history on `device`, generated, spilled [host latents], frame chunks [(host frames, side)], edge on
        `device`, edge side); the generators are set to their states after the last finished section."""
        tail = self._load(f"tail-{self.done - 1:04d}.safetensors")
        spilled, chunks = [], []
        for k, side in enumerate(self.joins):
            part = self._load(f"section-{k:04d}.safetensors")
            if "spilled" in part:
                spilled.insert(0, part["spilled"]) if side == "front" else spilled.append(part["spilled"])
            if "frames" in part:
                chunks.append((part["frames"], side))
        gens = _generators(generator, device)
        if sum(k.startswith("generator.") for k in tail) != len(gens):
            raise ResumeError(f"{self.folder}: the saved run used {len(gens)} generators' worth of state (damaged?)")
        for i, g in enumerate(gens):
            g.set_state(tail[f"generator.{i}"])
        return (tail["history"].to(device), self.generated, spilled, chunks, tail["edge"].to(device), self.joins[-1])

    def save(self, section, side, history, generated, spilled, chunk, edge, generator, device):
        """Record finished section `section` (index self.done), which joined on `side` ("front" / "back"): its host
        frames `chunk` (or None) and newly spilled latents `spilled` (or None), then the device history, the frame
        store's edge and the generators' states."""
        if section != self.done:
            raise ValueError(f"section {section} finished, but the state holds {self.done} sections")
        if self._fresh:  # a new run: the folder's old state goes now, as its first section lands
            self.remove()
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fresh = False
        part = {name: t.contiguous().cpu() for name, t in (("spilled", spilled), ("frames", chunk)) if t is not None}
        save_safetensors(self.folder / f"section-{section:04d}.safetensors", part)
        tail = {"history": history.contiguous().cpu(), "edge": edge.contiguous().cpu()}
        tail.update({f"generator.{i}": g.get_state() for i, g in enumerate(_generators(generator, device))})
        save_safetensors(self.folder / f"tail-{section:04d}.safetensors", tail)
        self.done, self.generated, self.joins = section + 1, generated, [*self.joins, side]
        doc = {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, "sections": self.sections,
               "done": self.done, "generated": generated, "joins": self.joins}
        write_text_atomic(self.folder / STATE_FILE, json.dumps(doc, indent=1))
        (self.folder / f"tail-{section - 1:04d}.safetensors").unlink(missing_ok=True)
