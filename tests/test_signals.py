"""How the commands stop, in real processes: SIGHUP as SIGTERM (exit 129), a second Ctrl-C while cleaning up ignored,
Ctrl-C while the imports run one line, a SIGHUP the process was started ignoring (nohup) still ignored."""
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_convert import toy_source
from tests.test_convert_safety import KILL_AFTER_WRITING, TOY_CLI

ROOT = Path(__file__).resolve().parent.parent

SIGNAL_AFTER_WRITING = """
convert_component = weights_convert.folders.convert_component
def convert_then_signal(*args, **kwargs):
    entry = convert_component(*args, **kwargs)
    os.kill(os.getpid(), signal.{name})
    import time; time.sleep(5)  # the handler raises before this ends
    return entry
weights_convert.folders.convert_component = convert_then_signal
"""

STOP_AGAIN_WHILE_CLEANING = """
import shutil
rmtree = shutil.rmtree
def rmtree_under_fire(*args, **kwargs):
    for s in (signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(os.getpid(), s)
    return rmtree(*args, **kwargs)
shutil.rmtree = rmtree_under_fire
"""

STOP_AGAIN_WHILE_PRINTING = """
class Stderr:
    def __init__(self, stream):
        self.stream, self.fired = stream, False
    def write(self, text):
        if not self.fired:
            self.fired = True
            os.kill(os.getpid(), signal.SIGINT)
        return self.stream.write(text)
    def flush(self):
        self.stream.flush()
sys.stderr = Stderr(sys.stderr)
"""


def toy_cli(patch, *args, **kwargs):
    return subprocess.run([sys.executable, "-c", TOY_CLI.format(root=str(ROOT), patch=patch), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.mark.parametrize("command", ["python -m weights_convert", "framepack-native convert"])
def test_sighup_is_handled_like_sigterm(tmp_path, command):
    toy_source(tmp_path / "src")
    patch = SIGNAL_AFTER_WRITING.format(name="SIGHUP")
    if command == "framepack-native convert":  # the same parser and run, inside the generate command's handling
        patch += "from framepack_native.cli import main as cli_main\nmain = lambda argv: cli_main(['convert', *argv])\n"
    proc = toy_cli(patch, tmp_path / "src", tmp_path / "out" / "dst")
    assert proc.returncode == 129, proc.stderr
    assert proc.stderr == "hung up; nothing written\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_sighup_stays_ignored_under_nohup(tmp_path):
    toy_source(tmp_path / "src")
    proc = toy_cli(SIGNAL_AFTER_WRITING.format(name="SIGHUP").replace("time.sleep(5)", "pass"), tmp_path / "src",
                   tmp_path / "dst", preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "dst" / "manifest.json").is_file()


@pytest.mark.parametrize("again", [STOP_AGAIN_WHILE_CLEANING, STOP_AGAIN_WHILE_PRINTING])
def test_repeated_stops_neither_cut_the_cleanup_nor_print_a_traceback(tmp_path, again):
    toy_source(tmp_path / "src")
    proc = toy_cli(SIGNAL_AFTER_WRITING.format(name="SIGINT") + again, tmp_path / "src", tmp_path / "out" / "dst")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "interrupted; nothing written\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# Ctrl-C while torch imports, the first seconds of every command: a real SIGINT when the import starts.
CTRL_C_ON_IMPORT = """
import os, runpy, signal, sys
class CtrlCOnTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlCOnTorch())
{run}
"""


@pytest.mark.parametrize("run, line", [
    ("sys.argv[0] = 'weights_convert'; runpy.run_module('weights_convert', run_name='__main__', alter_sys=True)",
     "interrupted; nothing written"),
    ("from framepack_native.cli import main; sys.exit(main(sys.argv[1:]))", "interrupted; no video written"),
])
def test_ctrl_c_during_the_imports_is_one_line(tmp_path, run, line):
    args = ([str(tmp_path / "src"), str(tmp_path / "dst")] if "weights_convert" in run
            else ["generate", "--demo", "--out", str(tmp_path / "x.mp4")])
    proc = subprocess.run([sys.executable, "-c", CTRL_C_ON_IMPORT.format(run=run), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == line + "\n"


SIGHUP_WHILE_ENCODING = """
import os, signal, sys
import av
from framepack_native.cli import main
encode = av.VideoFrame.from_ndarray
def hang_up_on_second_frame(*args, calls=[], **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGHUP)
    return encode(*args, **kwargs)
av.VideoFrame.from_ndarray = hang_up_on_second_frame
sys.exit(main(sys.argv[1:]))
"""


def test_sighup_while_encoding_leaves_no_video(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SIGHUP_WHILE_ENCODING, "generate", "--demo", "--device", "cpu",
                           "--height", "32", "--width", "48", "--num-frames", "9", "--window", "3", "--steps", "1",
                           "--out", str(tmp_path / "x.mp4")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 129, proc.stderr
    # the finished section is kept in the run's state, not in a video: --resume writes it without running again
    assert proc.stderr.splitlines()[-1] == (f"hung up; no video written; run the same command with --resume to "
                                            f"continue (state in {tmp_path / 'x.mp4.state'})")
    assert "Traceback" not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["x.mp4.state"]  # no video, no temporary


def test_killed_conversion_work_named_by_the_next_cli_run(tmp_path):
    toy_source(tmp_path / "src")
    assert toy_cli(KILL_AFTER_WRITING, tmp_path / "src", tmp_path / "dst").returncode == -signal.SIGKILL
    proc = toy_cli("", tmp_path / "src", tmp_path / "dst")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"warning: {tmp_path}: ") and "--clean-partial" in line, line
    proc = toy_cli("", tmp_path / "src", tmp_path / "dst", "--overwrite", "--clean-partial")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("warning: removed ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_parser_choices_written_out_match_the_converter():
    """__main__ writes the choices out so that parsing imports no torch; they must stay the converter's own."""
    from framepack_native.sections import SAMPLING_TYPES
    from weights_convert.__main__ import DTYPE_NAMES, SAMPLING_TYPE_NAMES
    from weights_convert.folders import DTYPES
    assert DTYPE_NAMES == tuple(DTYPES) and SAMPLING_TYPE_NAMES == SAMPLING_TYPES
