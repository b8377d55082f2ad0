"""framepack_native.files.atomic_path: the one atomic write (temporary beside the target, fsync, rename) behind
configs, safetensors files and videos."""
import os

import pytest
import torch

from framepack_native.files import atomic_path, write_text_atomic
from framepack_native.video import write_mp4
from framepack_native.weights import save_safetensors


def test_target_appears_only_when_complete(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    calls = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), replace(a, b))[1])
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.")
        tmp.write_bytes(b"half")
        assert not target.exists()
        with open(tmp, "ab") as f:
            f.write(b" and the rest")
        assert not target.exists()
    assert target.read_bytes() == b"half and the rest"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert calls[:2] == ["fsync", "replace"]  # the data reaches the disk before the name does


@pytest.mark.parametrize("error", [ValueError("bad tensor"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_neither_target_nor_temporary(tmp_path, error):
    with pytest.raises(type(error)):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"half")
            raise error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_keeps_the_existing_target(tmp_path, error):
    target = tmp_path / "config.json"
    target.write_text("old")
    with pytest.raises(type(error)):
        with atomic_path(target) as tmp:
            tmp.write_text("new, half")
            raise error
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_written_file_gets_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.json", "{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600


@pytest.mark.parametrize("writer", ["text", "safetensors", "mp4"])
def test_every_writer_goes_through_it(tmp_path, monkeypatch, writer):
    """An interrupt at the rename: each writer leaves its old target and no temporary."""
    target = tmp_path / {"text": "a.json", "safetensors": "m.safetensors", "mp4": "v.mp4"}[writer]
    target.write_bytes(b"old")

    def interrupted(a, b):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        if writer == "text":
            write_text_atomic(target, "{}")
        elif writer == "safetensors":
            save_safetensors(target, {"w": torch.ones(3)})
        else:
            write_mp4(target, torch.rand(2, 3, 16, 16))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
