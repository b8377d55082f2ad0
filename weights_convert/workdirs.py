"""Work folders beside a conversion's DST, and the one step that puts a finished conversion in place.

Each work folder is a marker (WORK_MARK, locked while its run lives) + the payload folder NAME:
    .NAME.XXXXXXXX.partial/NAME   the conversion being written; renamed to DST when complete and verified
    .NAME.XXXXXXXX.old/NAME       with --overwrite, the previous conversion until the new one is in place
Only folders with our marker are ours: nothing else beside DST is ever moved or removed.
"""
import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from framepack_native.files import CheckpointError, read_json
from framepack_native.models.loading import MANIFEST
from weights_convert.core import ConversionError

WORK_KINDS = ("partial", "old")
WORK_MARK = ".framepack_native_work.json"  # in each work folder: what makes a .DST.*.partial / .old folder ours
WORK_FORMAT = "framepack_native work folder"


class LeftoverWork(UserWarning):
    """Work folders beside DST from a conversion that was killed (SIGKILL, the OOM killer, a power cut)."""


def is_conversion(folder):
    """Whether `folder` holds a framepack_native conversion: a manifest.json of ours (any format version)."""
    try:
        return read_json(folder / MANIFEST).get("format") == "framepack_native"
    except CheckpointError:
        return False


def check_dst(dst, overwrite):
    """Refuse a DST that is a file, a non-empty folder without overwrite, or (with it) a non-empty folder that is not a
    previous conversion. Creates nothing."""
    if dst.exists():
        if not dst.is_dir():
            raise ConversionError(f"{dst}: exists and is not a folder")
        if any(dst.iterdir()):
            if not overwrite:
                raise ConversionError(f"{dst}: folder exists and is not empty (pass --overwrite to replace a previous "
                                      "conversion)")
            if not is_conversion(dst):
                raise ConversionError(f"{dst}: not a framepack_native conversion (no {MANIFEST} of ours); --overwrite "
                                      "replaces only a previous conversion: move it away or choose another DST")


def follow(dst):
    """DST, or the folder a symbolic-link DST points to (converted in place there, the link kept). Dangling: refused."""
    if not dst.is_symlink():
        return dst
    try:
        return dst.resolve(strict=True)
    except (OSError, RuntimeError):  # missing target, or a loop
        raise ConversionError(f"{dst}: a symbolic link to {os.readlink(dst)}, which does not exist") from None


def make_work(dst, kind, **fields):
    """Create our work folder .NAME.XXXXXXXX.<kind> beside dst: a marker naming it ours, locked while this process
    lives (the kernel drops the lock when it dies, SIGKILL too). Returns (folder, the lock's file descriptor)."""
    folder = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=f".{kind}"))
    fd = None
    try:
        fd = os.open(folder / WORK_MARK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with contextlib.suppress(OSError):  # a filesystem without locks: its leftovers are then never called stale
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"format": WORK_FORMAT, "kind": kind, "dst": dst.name, **fields}).encode())
    except BaseException:
        if fd is not None:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, fd


def remove_work(folder, name):
    """Remove one of our work folders: its payload first and the marker last, so that a cut removal stays ours."""
    shutil.rmtree(folder / name, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


def _in_use(mark):
    """Whether a running conversion holds this work folder's marker locked."""
    try:
        fd = os.open(mark, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:  # held (BlockingIOError), or no locks here: never treat it as stale
        return True
    finally:
        os.close(fd)


def _leftovers(dst):
    """[(folder, marker)] of our work folders beside dst that no running conversion holds: the name pattern, and a
    marker naming dst inside. A user's folder that only looks like one is not among them."""
    found = []
    try:
        entries = sorted(dst.parent.iterdir())
    except OSError:
        return found
    for folder in entries:
        kind = folder.name.rsplit(".", 1)[-1]
        if not folder.name.startswith(f".{dst.name}.") or kind not in WORK_KINDS:
            continue
        mark = folder / WORK_MARK
        if folder.is_symlink() or not folder.is_dir() or mark.is_symlink() or not mark.is_file():
            continue
        try:
            doc = read_json(mark)
        except CheckpointError:
            continue
        if (doc.get("format"), doc.get("kind"), doc.get("dst")) == (WORK_FORMAT, kind, dst.name) and not _in_use(mark):
            found.append((folder, doc))
    return found


def _identity(path):
    st = os.stat(path)
    return [st.st_dev, st.st_ino]


def _size(folders):
    """The bytes in these folders' files, for messages: "1.2 GB"."""
    n = sum(f.lstat().st_size for folder in folders for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def tidy_leftovers(dst, clean):
    """Our work folders beside dst from conversions that no longer run: a DST that an --overwrite moved aside and
    never replaced is restored; what holds nothing, or an aside whose replacement is in place, goes; the rest is named
    in one LeftoverWork warning, or removed when `clean`."""
    stale = []
    for folder, doc in _leftovers(dst):
        payload = folder / dst.name
        if not os.path.lexists(payload):
            remove_work(folder, dst.name)  # the marker alone
        elif doc["kind"] == "old" and not os.path.lexists(dst) and payload.is_dir() and not payload.is_symlink():
            os.rename(payload, dst)
            remove_work(folder, dst.name)
            warnings.warn(LeftoverWork(f"{dst}: restored from {folder.name}, where an --overwrite that was cut short "
                                       "had moved it"))
        elif doc["kind"] == "old" and os.path.isdir(dst) and _identity(dst) == doc.get("replacement"):
            remove_work(folder, dst.name)  # that --overwrite finished; only its clean-up was cut short
        else:
            stale.append(folder)
    if not stale:
        return
    listing = (f"{len(stale)} folder(s) left by conversions to {dst.name} that were killed: "
               f"{', '.join(f.name for f in stale)} ({_size(stale)})")
    if clean:
        for folder in stale:
            remove_work(folder, dst.name)
        warnings.warn(LeftoverWork(f"removed from {dst.parent}: {listing}"))
    else:
        warnings.warn(LeftoverWork(f"{dst.parent}: {listing}; pass --clean-partial to remove them"))


def put_in_place(new, dst, overwrite):
    """Rename the finished folder `new` to dst. Over nothing or an empty folder in one rename (the kernel refuses
    anything else); with overwrite, over a previous conversion, moved aside into a work folder of ours first and
    put back if the new one cannot follow. Anything else at dst is left as it is: ConversionError."""
    try:
        os.rename(new, dst)
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    if os.path.islink(dst) or not os.path.isdir(dst):
        now = "not a folder"
    elif not overwrite:
        now = "a folder that is not empty"
    elif not is_conversion(dst):
        now = "a folder that is not a framepack_native conversion"
    else:
        now = None
    if now:
        raise ConversionError(f"{dst}: changed while converting, now {now}; left as it is, nothing written")
    aside, lock = make_work(dst, "old", replacement=_identity(new))
    try:
        os.rename(dst, aside / dst.name)
        try:
            os.rename(new, dst)
        except BaseException:
            try:
                os.rename(aside / dst.name, dst)
            except OSError:
                raise ConversionError(f"{dst}: appeared again while replacing it; left as it is, the previous "
                                      f"conversion is in {aside}") from None
            raise
    except BaseException:
        if not os.path.lexists(aside / dst.name):
            remove_work(aside, dst.name)
        raise
    finally:
        os.close(lock)
    remove_work(aside, dst.name)  # the new DST is in place: a failure here changes nothing
