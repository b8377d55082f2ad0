"""The errors and file helpers that weights, configs, the converter and the video writer share: reading a JSON
object, and one atomic write (temporary name in the target's folder, fsync, rename) for everything written."""
import contextlib
import json
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


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` to write; when the block ends normally the file is fsynced, given the
    usual permissions and renamed to `path`. On any exception (KeyboardInterrupt too) the temporary is removed and
    `path` is left as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
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
