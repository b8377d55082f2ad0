"""The errors and file helpers that weights, configs, the converter and the video writer share: reading a JSON
object, and one atomic write (temporary name in the target's folder, fsync, rename) for everything written."""
import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, pickled, or not matching the model."""


def json_type(value):
    """The JSON name of a parsed value's type, for messages."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def read_json(path):
    """A JSON object from a file; CheckpointError naming the file if missing, unreadable, malformed or not an object."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {'not a file' if path.exists() else 'missing'}")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object at the top level, got {json_type(doc)}")
    return doc


def sha256(path, chunk=16 * 1024 * 1024):
    """The SHA-256 hex digest of a file, read `chunk` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Config ranges: every real checkpoint with room to spare (the 13B transformer: hidden 3072, MLP 12288, 60 blocks;
# Llama-3 8B: hidden 4096, MLP 14336, 32 layers, vocabulary 128320), and no model too large to describe.
MAX_WIDTH = 65536          # any hidden size, MLP width, head count or dimension, channel count
MAX_LAYERS = 1024          # any count of layers or blocks
MAX_VOCAB = 2**24          # token vocabularies
MAX_POSITIONS = 2**24      # position tables and trained contexts


def check_range(name, value, low, high=math.inf, above=False):
    """Raise ValueError naming the field unless value is a finite number with low <= value <= high (low < value
    with above=True): the config ranges checked before any model is built."""
    number = type(value) is int or type(value) is float and math.isfinite(value)  # not bool, NaN or infinity
    if not (number and (low < value if above else low <= value) and value <= high):
        bounds = (f"> {low}" if above else f">= {low}") + (f" and <= {high}" if high != math.inf else "")
        raise ValueError(f"{name} must be {bounds}, got {value}")


def file_mode(folder=False):
    """The mode open() / mkdir() would give (0o666 / 0o777 less the umask); mkstemp / mkdtemp give 0o600 / 0o700."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def _fsync(path, folder=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary(path):
    """A new empty file beside `path`, named .NAME.XXXXXXXX.tmp (mkstemp's random part): atomic_path's temporary."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def check_writable(path):
    """Make and remove atomic_path's temporary for `path` now, so that a name too long (the temporary is 14 bytes
    longer) or a folder that refuses new files fails before the work, not at its end; raises OSError."""
    _temporary(Path(path)).unlink()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` to write; when the block ends normally the file is fsynced, given the
    usual permissions and renamed to `path`. On any exception (KeyboardInterrupt too) the temporary is removed and
    `path` is left as it was."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        _fsync(tmp)
        tmp.chmod(file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename is done; a folder that cannot be fsynced changes nothing
        _fsync(path.parent, folder=True)


def write_text_atomic(path, text):
    """Write text to path atomically (see atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
