"""weights_convert never deletes or replaces what it did not create: a DST made by someone else mid-run, a symlinked
DST, a user's own .DST.old or look-alike .partial folder; work folders left by a killed run are named by the next
run and removed with --clean-partial; the sampling type comes from the transformer folder's own name only."""
import json
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import weights_convert.folders
import weights_convert.registry
from framepack_native.models.loading import read_manifest
from framepack_native.weights import CheckpointError
from tests.test_convert import TOY, toy_source
from weights_convert import ConversionError, convert, verify
from weights_convert.__main__ import main
from weights_convert.folders import convert_component, guess_sampling_type

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def toy_registry(monkeypatch):
    monkeypatch.setattr(weights_convert.registry, "converters", lambda: (TOY,))


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def during_conversion(monkeypatch, action):
    """Run action() after the toy component is written, before the converter puts its result in place."""
    def step(*args, **kwargs):
        entry = convert_component(*args, **kwargs)
        action()
        return entry
    monkeypatch.setattr(weights_convert.folders, "convert_component", step)


def someone_elses_folder(path):
    path.mkdir()
    (path / "theirs.txt").write_text("theirs")


@pytest.mark.parametrize("overwrite", [False, True])
def test_destination_created_during_the_conversion_is_left_alone(tmp_path, monkeypatch, capsys, overwrite):
    toy_source(tmp_path / "src")
    during_conversion(monkeypatch, lambda: someone_elses_folder(tmp_path / "dst"))
    argv = [str(tmp_path / "src"), str(tmp_path / "dst")] + (["--overwrite"] if overwrite else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'dst'}: ") and err.count("\n") == 1, err
    assert "left as it is" in err, err
    assert names(tmp_path / "dst") == ["theirs.txt"]
    assert names(tmp_path) == ["dst", "src"]  # no work folder left


def test_conversion_replaced_by_a_foreign_folder_during_an_overwrite_is_left_alone(tmp_path, monkeypatch):
    toy_source(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "dst")

    def swap():
        (tmp_path / "dst").rename(tmp_path / "moved")
        someone_elses_folder(tmp_path / "dst")

    during_conversion(monkeypatch, swap)
    with pytest.raises(ConversionError, match="left as it is"):
        convert(tmp_path / "src", tmp_path / "dst", overwrite=True)
    assert names(tmp_path / "dst") == ["theirs.txt"]
    assert names(tmp_path) == ["dst", "moved", "src"]


def test_empty_folder_created_during_the_conversion_is_taken(tmp_path, monkeypatch):
    toy_source(tmp_path / "src")
    during_conversion(monkeypatch, lambda: (tmp_path / "dst").mkdir())
    convert(tmp_path / "src", tmp_path / "dst")
    verify(tmp_path / "dst")
    assert names(tmp_path) == ["dst", "src"]


def test_overwrite_refuses_a_folder_that_is_not_a_conversion(tmp_path, capsys):
    toy_source(tmp_path / "src")
    someone_elses_folder(tmp_path / "dst")
    assert main([str(tmp_path / "src"), str(tmp_path / "dst"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a framepack_native conversion" in err, err
    assert names(tmp_path / "dst") == ["theirs.txt"] and names(tmp_path) == ["dst", "src"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_symlinked_destination_is_followed_and_kept(tmp_path, overwrite):
    toy_source(tmp_path / "src")
    (tmp_path / "disk").mkdir()
    target = tmp_path / "disk" / "native"
    if overwrite:
        convert(tmp_path / "src", target)
        (target / "old.txt").write_text("a previous conversion's extra file")
    else:
        target.mkdir()
    (tmp_path / "dst").symlink_to(target, target_is_directory=True)
    assert convert(tmp_path / "src", tmp_path / "dst", overwrite=overwrite) == tmp_path / "dst"
    assert (tmp_path / "dst").is_symlink() and (tmp_path / "dst").resolve() == target.resolve()
    verify(target)
    assert not (target / "old.txt").exists()
    assert names(tmp_path) == ["disk", "dst", "src"] and names(tmp_path / "disk") == ["native"]


def test_dangling_symlink_destination_refused(tmp_path, capsys):
    toy_source(tmp_path / "src")
    (tmp_path / "dst").symlink_to(tmp_path / "nowhere")
    assert main([str(tmp_path / "src"), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symbolic link" in err and str(tmp_path / "nowhere") in err, err
    assert (tmp_path / "dst").is_symlink() and names(tmp_path) == ["dst", "src"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_own_dot_old_folder_is_never_taken_or_deleted(tmp_path, overwrite):
    toy_source(tmp_path / "src")
    if overwrite:
        convert(tmp_path / "src", tmp_path / "dst")
    someone_elses_folder(tmp_path / ".dst.old")
    convert(tmp_path / "src", tmp_path / "dst", overwrite=overwrite)
    verify(tmp_path / "dst")
    assert names(tmp_path / ".dst.old") == ["theirs.txt"]
    assert names(tmp_path) == [".dst.old", "dst", "src"]


TOY_CLI = """
import os, signal, sys
sys.path.insert(0, {root!r})
import weights_convert.folders, weights_convert.registry
from tests.test_convert import TOY
from weights_convert.__main__ import main
weights_convert.registry.converters = lambda: (TOY,)
{patch}
sys.exit(main(sys.argv[1:]))
"""

KILL_AFTER_WRITING = """
convert_component = weights_convert.folders.convert_component
def convert_then_die(*args, **kwargs):
    convert_component(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
weights_convert.folders.convert_component = convert_then_die
"""

KILL_BETWEEN_THE_RENAMES = """
rename = os.rename
def rename_then_die(a, b):
    rename(a, b)
    if os.path.basename(a) == "dst" and os.path.dirname(b).endswith(".old"):  # the old DST aside, the new not in
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename_then_die
"""


def toy_cli(patch, *args):
    return subprocess.run([sys.executable, "-c", TOY_CLI.format(root=str(ROOT), patch=patch), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_work_of_a_killed_conversion_is_named_then_removed_with_clean_partial(tmp_path, capsys):
    toy_source(tmp_path / "src")
    proc = toy_cli(KILL_AFTER_WRITING, tmp_path / "src", tmp_path / "dst")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (left,) = [n for n in names(tmp_path) if n.startswith(".dst.") and n.endswith(".partial")]
    someone_elses_folder(tmp_path / ".dst.abcd1234.partial")  # looks like ours, is not: never named nor removed
    assert main([str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and left in lines[0], lines
    assert "--clean-partial" in lines[0] and ".dst.abcd1234.partial" not in lines[0], lines
    assert left in names(tmp_path)
    assert main([str(tmp_path / "src"), str(tmp_path / "dst"), "--overwrite", "--clean-partial"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: removed ") and left in lines[0], lines
    assert names(tmp_path) == [".dst.abcd1234.partial", "dst", "src"]
    assert names(tmp_path / ".dst.abcd1234.partial") == ["theirs.txt"]
    assert main([str(tmp_path / "src"), str(tmp_path / "dst"), "--overwrite"]) == 0
    assert capsys.readouterr().err == ""


def test_overwrite_killed_between_its_renames_is_restored_by_the_next_run(tmp_path):
    toy_source(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "dst")
    (tmp_path / "dst" / "mine.txt").write_text("old")
    proc = toy_cli(KILL_BETWEEN_THE_RENAMES, tmp_path / "src", tmp_path / "dst", "--overwrite")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (tmp_path / "dst").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("[]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="expected a JSON object"):
            convert(tmp_path / "bad", tmp_path / "dst", overwrite=True)
    assert [str(w.message) for w in caught if "restored" in str(w.message)], [str(w.message) for w in caught]
    assert (tmp_path / "dst" / "mine.txt").read_text() == "old"
    (partial,) = [n for n in names(tmp_path) if n.startswith(".")]  # the aside folder is gone, the new copy stays
    assert partial.startswith(".dst.") and partial.endswith(".partial")
    assert [str(w.message) for w in caught if partial in str(w.message)], [str(w.message) for w in caught]


def test_a_running_conversions_work_is_not_stale(tmp_path, monkeypatch):
    """A second conversion to the same DST while the first runs: the first's folder is neither named nor removed."""
    toy_source(tmp_path / "src")
    seen = {}

    def second_conversion():
        ours = [n for n in names(tmp_path) if n.endswith(".partial")]
        monkeypatch.setattr(weights_convert.folders, "convert_component", convert_component)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            convert(tmp_path / "src", tmp_path / "dst", clean_partial=True)
        seen["warnings"] = [str(w.message) for w in caught]
        seen["kept"] = all((tmp_path / n).is_dir() for n in ours) and len(ours) == 1

    during_conversion(monkeypatch, second_conversion)
    with pytest.raises(ConversionError, match="left as it is"):  # the second one's DST appeared meanwhile
        convert(tmp_path / "src", tmp_path / "dst")
    assert seen == {"warnings": [], "kept": True}
    verify(tmp_path / "dst")
    assert names(tmp_path) == ["dst", "src"]


@pytest.mark.parametrize("folder, expected, source", [
    ("models/FramePack_F1_I2V_HY_20250503", "vanilla", "folder name 'FramePack_F1_I2V_HY_20250503'"),
    ("FramePack_F1_vs_I2V/FramePackI2V_HY", "inverted_anti_drifting",
     "default (folder name 'FramePackI2V_HY' does not say F1)"),
    ("F1_I2V/transformer", "inverted_anti_drifting", "default (folder name 'transformer' does not say F1)"),
    ("hub/models--lllyasviel--FramePack_F1_I2V_HY_20250503/snapshots/" + "0123456789abcdef" * 2 + "01234567",
     "vanilla", "Hugging Face cache folder 'models--lllyasviel--FramePack_F1_I2V_HY_20250503'"),
    ("hub/models--lllyasviel--FramePackI2V_HY/snapshots/" + "a" * 40, "inverted_anti_drifting",
     "default (Hugging Face cache folder 'models--lllyasviel--FramePackI2V_HY' does not say F1)"),
    ("FramePack_F1_I2V_HY_20250503/snapshots/" + "a" * 40, "inverted_anti_drifting",
     f"default (folder name '{'a' * 40}' does not say F1)"),  # not the cache layout: the hash's own name
])
def test_sampling_type_from_the_transformer_folders_own_name(tmp_path, folder, expected, source):
    assert guess_sampling_type(tmp_path / folder) == (expected, source)


def test_sampling_type_of_a_dot_path_is_the_folders_name(tmp_path, monkeypatch):
    (tmp_path / "FramePack_F1_I2V_HY_20250503").mkdir()
    monkeypatch.chdir(tmp_path / "FramePack_F1_I2V_HY_20250503")
    assert guess_sampling_type(Path("."))[0] == "vanilla"
    assert guess_sampling_type(Path("sub/.."))[0] == "vanilla"


def _manifest_with(root, **fields):
    toy_source(root / "src")
    dst = convert(root / "src", root / "dst")
    doc = json.loads((dst / "manifest.json").read_text())
    doc.update(fields)
    (dst / "manifest.json").write_text(json.dumps(doc))
    return dst


@pytest.mark.parametrize("fields, message", [
    ({"sampling_type": "vanilla", "sampling_type_source": 3}, "field 'sampling_type_source' must be a string, got 3"),
    ({"sampling_type": "vanilla", "sampling_type_source": ""}, "field 'sampling_type_source' must name where"),
    ({"sampling_type": None, "sampling_type_source": "--sampling-type"},
     "field 'sampling_type_source' goes with a 'sampling_type'"),
])
def test_malformed_sampling_type_source_named(tmp_path, fields, message):
    dst = _manifest_with(tmp_path, **fields)
    with pytest.raises(CheckpointError) as info:
        read_manifest(dst)
    assert str(info.value).startswith(f"{dst / 'manifest.json'}: ") and message in str(info.value), str(info.value)


def test_manifest_without_sampling_type_source_still_reads(tmp_path):
    dst = _manifest_with(tmp_path, sampling_type="vanilla")
    doc = json.loads((dst / "manifest.json").read_text())
    doc.pop("sampling_type_source", None)
    (dst / "manifest.json").write_text(json.dumps(doc))
    assert read_manifest(dst)["sampling_type"] == "vanilla"
