"""`framepack-native serve`: the web app (framepack_native.app) on a local port.

    framepack-native serve [--model DIR | --demo] [--host 127.0.0.1] [--port 7860] [--outputs DIR]
                           [--lora-dir DIR] [--device cuda] [--dtype bf16|fp16|fp32|fp8] [--offload]

Bad arguments, a model folder that does not load, a damaged queue.json or a missing Gradio: one line, exit code 2,
before the server starts. Ctrl-C or SIGTERM stops the server: the running job stops at its next step and resumes
after its last finished section on the next start.
"""
import os
import sys
import time
from pathlib import Path

from framepack_native.cli_checks import DTYPES, UsageError, _check_device


def add_serve_parser(sub):
    serve = sub.add_parser("serve", help="the web app (Gradio; pip install -e '.[ui]')")
    model = serve.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="a folder written by `python -m weights_convert`")
    model.add_argument("--demo", action="store_true", help="the built-in tiny model with random weights")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                          "only; 0.0.0.0 exposes the app to the network)")
    serve.add_argument("--port", type=int, default=7860, help="TCP port, 1..65535 (default 7860)")
    serve.add_argument("--outputs", default="outputs", help="videos, their parameters and the job queue "
                                                            "(default ./outputs)")
    serve.add_argument("--lora-dir", help="a folder of LoRA .safetensors files the page offers")
    serve.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda when available)")
    serve.add_argument("--dtype", choices=DTYPES, default=None, help="as generate --dtype (default: the preset's)")
    serve.add_argument("--offload", action="store_true", help="keep weights on the CPU between uses (24 GB GPUs)")
    serve.set_defaults(func=serve_command)


def _check(args):
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    if args.model is not None and not (Path(args.model) / "manifest.json").is_file():
        raise UsageError(f"--model {args.model}: not a converted model folder (no manifest.json; "
                         "python -m weights_convert makes one)")
    if args.lora_dir is not None and not Path(args.lora_dir).is_dir():
        raise UsageError(f"--lora-dir {args.lora_dir}: no such folder")
    out = Path(args.outputs)
    if out.exists() and (out.is_symlink() and not out.is_dir() or not out.is_dir()):
        raise UsageError(f"--outputs {out}: exists and is not a folder")
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    _check_device(args.device)
    if args.offload and not args.device.startswith("cuda"):
        raise UsageError("--offload moves weights between the CPU and a GPU: it needs --device cuda")


def serve_command(args):
    _check(args)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local app
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("the web app needs Gradio: pip install -c constraints.txt -e '.[ui]'") from None
    from framepack_native.app.jobs import JobQueue
    from framepack_native.app.runner import AppModel, Runner
    from framepack_native.app.ui import CSS, build_app

    model = AppModel(model_dir=args.model, device=args.device, offload=args.offload, dtype=args.dtype,
                     lora_dir=args.lora_dir)
    runner = Runner(model)
    try:
        Path(args.outputs).mkdir(parents=True, exist_ok=True)
        queue = JobQueue(args.outputs, runner, model.describe())
    except OSError as e:
        raise UsageError(f"--outputs {args.outputs}: {e.strerror or e}") from None
    print("loading the model ..." if not model.demo else "framepack-native serve --demo: a tiny FramePack with RANDOM "
          "weights (no download); its videos show the app working, not a meaningful result.", file=sys.stderr)
    runner.load()  # a model that does not load fails here, with one line, before the page is served
    app = build_app(queue, model)
    from framepack_native.interrupts import stops_raise
    try:
        with stops_raise():
            try:
                app.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, quiet=False,
                           allowed_paths=[str(Path(args.outputs).resolve())], css=CSS, show_error=False,
                           footer_links=[], ssr_mode=False, max_file_size="64mb")
            except OSError as e:  # Gradio's "Cannot find empty port in range: P-P ..."
                raise UsageError(f"--host {args.host} --port {args.port}: cannot listen there (in use, or not an "
                                 f"address of this machine): {str(e).splitlines()[0]}") from None
            queue.start()  # once the page is up: a port in use stops the server before any job runs
            print(f"serving on http://{args.host}:{args.port} (outputs in {args.outputs}); Ctrl-C stops", flush=True)
            while True:
                time.sleep(0.5)
    except BaseException as e:
        from framepack_native.interrupts import Terminated
        if not isinstance(e, (KeyboardInterrupt, Terminated)):
            raise
        running = queue.running()
        print("stopping" + (f": job {running.id} stops at its next step and resumes on the next start"
                            if running else ""), file=sys.stderr, flush=True)
        queue.close()
        app.close()
    return 0
