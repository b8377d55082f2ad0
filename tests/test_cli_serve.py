"""`framepack-native serve`'s refusals: each bad argument, a damaged job queue or a missing Gradio is one line on
stderr and exit code 2 before any server starts, and nothing is written into the outputs folder."""
import sys

from framepack_native.cli import main


def refused(capsys, argv):
    code = main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("framepack-native serve --demo:")]  # the demo's banner, before the server starts
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_bad_arguments_are_one_line(tmp_path, capsys):
    not_folder = tmp_path / "file"
    not_folder.write_text("x")
    no_model = tmp_path / "empty_model"
    no_model.mkdir()
    out = ["--outputs", str(tmp_path / "out")]
    cases = [
        ([], "one of the arguments --model --demo is required"),
        (["--demo", "--model", str(no_model)], "not allowed with argument"),
        (["--demo", "--port", "0"], "--port must be between 1 and 65535, got 0"),
        (["--demo", "--port", "70000"], "--port must be between 1 and 65535, got 70000"),
        (["--model", str(tmp_path / "missing")], "no manifest.json"),
        (["--model", str(no_model)], "no manifest.json"),
        (["--demo", "--lora-dir", str(tmp_path / "nope")], "--lora-dir"),
        (["--demo", "--device", "tpu"], "--device 'tpu'"),
        (["--demo", "--device", "cpu", "--offload"], "--offload"),
    ]
    for args, said in cases:
        line = refused(capsys, ["serve", *args, *out])
        assert said in line, (args, line)
    assert refused(capsys, ["serve", "--demo", "--outputs", str(not_folder)]).endswith("exists and is not a folder")
    assert not (tmp_path / "out").exists()


def test_damaged_queue_is_named(tmp_path, capsys):
    (tmp_path / "queue.json").write_text('{"format": "framepack_native.queue", "version": 1, "jobs": [{"id": 3}]}')
    line = refused(capsys, ["serve", "--demo", "--device", "cpu", "--outputs", str(tmp_path)])
    assert "queue.json" in line and "job 0" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "queue.json"]  # the folder's lock, empty


def test_a_second_server_on_the_same_outputs_is_refused(tmp_path, capsys):
    from framepack_native.app.jobs import JobQueue
    first = JobQueue(tmp_path, runner=None)
    try:
        line = refused(capsys, ["serve", "--demo", "--device", "cpu", "--outputs", str(tmp_path)])
        assert "another framepack-native serve uses this outputs folder" in line
    finally:
        first.release()


def test_missing_gradio_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    line = refused(capsys, ["serve", "--demo", "--device", "cpu", "--outputs", str(tmp_path / "out")])
    assert "needs Gradio" in line and ".[ui]" in line


def test_default_host_is_local():
    """Unless told otherwise the app listens on this machine only, on Gradio's usual port."""
    from framepack_native.cli import build_parser
    args = build_parser().parse_args(["serve", "--demo"])
    assert (args.host, args.port, args.outputs) == ("127.0.0.1", 7860, "outputs")


def test_a_port_in_use_is_one_line(tmp_path, capsys):
    """A port another program holds: one line naming it, exit 2, and no job started (the queue's worker starts only
    once the page is up)."""
    import socket
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        line = refused(capsys, ["serve", "--demo", "--device", "cpu", "--port", str(port), "--outputs",
                                str(tmp_path)])
    assert f"--port {port}: cannot listen there" in line
