"""The framepack-native command: generate a video from an image and a prompt, or convert checkpoints.

Bad input ends with one line on stderr and exit code 2, no traceback and no output file.
"""
import argparse
import os
import sys
import traceback
from pathlib import Path

from framepack_native.caches import finite_float
from framepack_native.cli_checks import (DTYPES, FPS, MAX_FRAMES, MAX_SECONDS, MAX_SIZE, MAX_STEPS,  # noqa: F401
                                         MAX_WINDOW, PRESET_NAMES, UsageError, _check_args, state_folder,
                                         torch_dtype)

STATE = {"unfinished": lambda: "no video written"}  # what a stop leaves, for the one line it prints


def save_png(path, picture):
    """Write an (H, W, 3) uint8 array or a PIL image as a PNG, atomically (a viewer never sees half a file)."""
    import PIL.Image

    from framepack_native.files import atomic_path
    picture = picture if isinstance(picture, PIL.Image.Image) else PIL.Image.fromarray(picture)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _generate(args):
    import torch
    from tqdm import tqdm

    from framepack_native.video import write_mp4

    frames, images = _check_args(args)
    from framepack_native import cli_parallel
    rank = cli_parallel.start(args)  # None in one process; under torchrun this rank, its device set
    dtype = torch_dtype(args.dtype)
    quantize = {"transformer": "fp8" if args.dtype == "fp8" else None, "text_encoder": "fp8" if args.fp8_llm else None}
    if args.demo:
        from framepack_native.demo import DEMO_PROMPT, demo_image, demo_pipeline
        print("framepack-native demo: a tiny FramePack with RANDOM weights (no download); the video shows the "
              "pipeline running end to end, not a meaningful result.", file=sys.stderr)
        pipe = demo_pipeline(seed=args.seed, device=args.device)
        image = images.get("--image", None if args.extend else demo_image())
        prompt = DEMO_PROMPT if args.prompt is None else args.prompt
        for path, strength in args.loras:  # merged into the weights; a LoRA that does not fit changes nothing
            pipe.load_lora(path, strength)
        from framepack_native.fp8 import quantize_blocks
        for name, how in quantize.items():
            if how:
                quantize_blocks(getattr(pipe, name))  # after the LoRAs: they merge into the float weights
    else:
        from framepack_native import FramePackPipeline
        pipe = FramePackPipeline.from_pretrained(args.model, dtype=dtype, device=args.device, offload=args.offload,
                                                 preset=args.preset, quantize=quantize, loras=args.loras,
                                                 parallel=False)  # enabled below, as for the demo
        image, prompt = images.get("--image"), args.prompt
    if rank is not None:
        pipe.enable_parallel()  # every transformer call over the ranks; true CFG's branches on two halves
    if args.vae_tiling:
        pipe.vae.enable_tiling()  # diffusers' tiles and overlaps, as the official app on GPUs under 60 GB

    if args.one_frame is not None:
        from framepack_native.cli_control import run_one_frame
        return run_one_frame(pipe, args, image, prompt, torch.Generator().manual_seed(args.seed))
    bar = None  # made at the first step, so that lines printed while encoding come before it
    written = []  # frames in --out so far: every finished section replaces it with the whole video so far
    pending = []  # (frames, --out's file identity before) while a replacement is under way

    def progress(event):
        nonlocal bar
        if event["kind"] == "resume":
            print(f"resuming after section {event['sections_done']}/{event['sections']} "
                  f"({event['frames_so_far']} frames)", file=sys.stderr)
        if event["kind"] == "step":
            bar = bar or tqdm(desc="sampling", unit="step", total=event["sections"] * event["steps"], file=sys.stderr)
            bar.set_postfix_str(f"section {event['section'] + 1}/{event['sections']}", refresh=False)
            bar.update(1)
            if args.preview and event["preview"] is not None:
                save_png(args.preview, event["preview"].numpy())
        else:  # a finished or resumed section: a complete, playable mp4 of everything so far (atomically replaced)
            frames = event["video"]()
            pending[:] = [frames.shape[1], _file_identity(args.out)]
            write_mp4(args.out, frames[0], fps=FPS, crf=args.crf)
            written[:], pending[:] = [frames.shape[1]], []

    state = state_folder(args.out)

    def unfinished():
        if pending and _file_identity(args.out) != pending[1]:  # stopped after the rename, before it was noted
            written[:], pending[:] = pending[:1], []
        said = f"the {written[0]} frames of the finished sections are in {args.out}" if written else "no video written"
        if (state / "state.json").is_file():
            said += f"; run the same command with --resume to continue (state in {state})"
        return said
    STATE["unfinished"] = unfinished
    generator = torch.Generator().manual_seed(args.seed)
    from framepack_native.pipeline import NonFiniteError
    from framepack_native.run_state import RunState
    try:
        video = pipe(image, prompt, preset=args.preset, last_image=images.get("--last-image"),
                     negative_prompt=args.negative_prompt, resolution=args.resolution, height=args.height,
                     width=args.width, seconds=args.seconds, num_frames=args.num_frames,
                     latent_window_size=args.window, num_inference_steps=args.steps, guidance_scale=args.guidance,
                     true_cfg_scale=args.cfg, generator=generator, sampling_type=args.sampling, sampler=args.sampler,
                     cache=args.cache_config, blend_sections=args.blend_sections, keyframes=args.keyframes,
                     keyframe_embeds=args.keyframe_embeds, video=args.extend_frames,
                     context_latents=args.context_latents, output_type="uint8",
                     callback=progress if not rank else None, state_dir=state if rank is None else None,
                     resume=args.resume)
    except NonFiniteError as e:
        if bar is not None:
            bar.close()
        print(f"error: {e}; {STATE['unfinished']()}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk or a lost folder mid-run: one line, and what the run kept
        if bar is not None:
            bar.close()
        print(f"error: {e}; {STATE['unfinished']()}", file=sys.stderr)
        return 1
    except Exception as e:
        if isinstance(e, (ValueError, MemoryError)) or _out_of_memory(e):
            raise  # bad input and out-of-memory: one line from main
        if bar is not None:
            bar.close()
        traceback.print_exc()  # a bug: its traceback, then what the crash left
        print(f"error: the run crashed ({type(e).__name__}); {STATE['unfinished']()}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()  # before any error line, not after it
    if rank is not None:
        cli_parallel.finish()
        if rank:
            return 0  # rank 0 writes
    path = Path(args.out)
    if written[:1] != [video.shape[1]]:  # a resumed run that was already complete: no section event wrote it
        write_mp4(path, video[0], fps=FPS, crf=args.crf)
    if rank is None:
        RunState(state, {}, 0).remove()  # OUT is complete: its state's files are not needed any more (only those)
    print(f"wrote {path} ({video.shape[1]} frames, {video.shape[-1]}x{video.shape[-2]}, {FPS} fps)")
    if args.magcache_calibrate:  # for --magcache-ratios FILE.json
        import json
        print(json.dumps(args.cache_config.calibrated_ratios()))
    return 0


def _file_identity(path):
    """(inode, mtime) of a file, None if absent: an atomic replacement (a new file renamed over it) changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _out_of_memory(e):
    """A CUDA or host (torch's CPU allocator reports a RuntimeError) allocation failure."""
    import torch
    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and (
        "can't allocate memory" in str(e) or "not enough memory" in str(e)))


def _generate_parser(gen):
    gen.add_argument("--demo", action="store_true", help="built-in tiny model with random weights, no download")
    gen.add_argument("--preset", choices=PRESET_NAMES, default="official",
                     help="official: the official app's loop (default); diffusers: diffusers' FramePack pipeline")
    gen.add_argument("--model", help="a folder written by `python -m weights_convert`")
    gen.add_argument("--image", help="the first frame (PNG, JPEG, ...)")
    gen.add_argument("--prompt", help="what happens in the video; timestamped: '[0s-2s: a cat sleeps] [2s: the cat "
                                      "wakes up]' (each section uses the prompt active at its start)")
    gen.add_argument("--last-image", help="the last frame (inverted anti-drifting sampling only)")
    gen.add_argument("--negative-prompt", help="with --cfg > 1: what to steer away from")
    length = gen.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=finite_float, default=None,
                        help=f"video length at {FPS} fps, at most {MAX_SECONDS} (default 5; official preset: "
                             "round(seconds * 30 / (4 * window)) sections of 4 * window frames, +1 frame)")
    length.add_argument("--num-frames", type=int, default=None, help=f"video length in frames, at most {MAX_FRAMES}")
    gen.add_argument("--resolution", type=int, choices=(640,), default=640,
                     help="without --height/--width: the nearest bucket of this resolution for the image's aspect")
    gen.add_argument("--height", type=int, default=None,
                     help=f"multiple of 16 up to {MAX_SIZE}, with --width (default: the bucket; demo 64)")
    gen.add_argument("--width", type=int, default=None,
                     help=f"multiple of 16 up to {MAX_SIZE}, with --height (default: the bucket; demo 96)")
    gen.add_argument("--steps", type=int, default=None,
                     help=f"sampling steps per section, at most {MAX_STEPS} (default 25; demo 8)")
    gen.add_argument("--guidance", type=finite_float, default=10.0, help="distilled guidance scale")
    gen.add_argument("--cfg", type=finite_float, default=1.0,
                     help="true classifier-free guidance scale (needs a negative)")
    # const: teacache.DEFAULT_THRESHOLD, written out because this module does not import torch at start-up
    gen.add_argument("--teacache", type=finite_float, nargs="?", const=0.15, default=None, metavar="THRESHOLD",
                     help="skip the transformer on steps where its input barely moved (approximate, faster); "
                          "threshold 0..10, bare flag: 0.15 as the official app")
    gen.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                     help="a LoRA file (safetensors: musubi/kohya, diffusers/PEFT or original HunyuanVideo keys), "
                          "merged at STRENGTH (default 1); repeatable")
    gen.add_argument("--seed", type=int, default=None, help="-2**63 .. 2**64-1 (default 31337 official, 0 diffusers)")
    gen.add_argument("--sampling", default=None, help="inverted_anti_drifting | vanilla (default: the model's)")
    gen.add_argument("--sampler", default=None, help="unipc | euler (default: the preset's, unipc / euler)")
    gen.add_argument("--window", type=int, default=9, help=f"latent frames per section, 1..{MAX_WINDOW}")
    gen.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda when available)")
    gen.add_argument("--fp8-llm", action="store_true",
                     help="the Llama text encoder's decoder layers in block-scaled fp8 too (quantised at load)")
    gen.add_argument("--dtype", choices=DTYPES, default=None,
                     help="one dtype for every component (default: the preset's; fp32 on CPU); fp8: the "
                          "transformer blocks' Linear weights in block-scaled fp8 (quantised at load unless the "
                          "folder was converted with --dtype fp8), every component computing in the preset's dtype")
    gen.add_argument("--offload", action="store_true", help="keep weights on the CPU between uses (24 GB GPUs)")
    gen.add_argument("--vae-tiling", action="store_true",
                     help="VAE encode/decode in overlapping spatial tiles: ~2 GiB instead of ~7 GiB at 640x640, slower")
    gen.add_argument("--crf", type=int, default=16, help="H.264 quality 0..51 (lower is better)")
    gen.add_argument("--out", required=True,
                     help="output .mp4 path, replaced after every finished section by the whole video so far")
    gen.add_argument("--resume", action="store_true",
                     help="continue the run stopped or crashed with the same arguments and --out (its state is kept "
                          "in OUT.state after every section)")
    gen.add_argument("--preview", metavar="FILE.png",
                     help="write the latest step's preview (the predicted clean latents, the app's RGB map) here")
    from framepack_native.caches import add_cache_arguments
    from framepack_native.cli_control import add_control_arguments, add_one_frame_arguments
    add_cache_arguments(gen)
    add_control_arguments(gen)
    add_one_frame_arguments(gen)
    gen.set_defaults(func=_generate)


def build_parser():
    parser = Parser(prog="framepack-native", description="FramePack image-to-video in PyTorch")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _generate_parser(sub.add_parser("generate", help="image + prompt -> mp4"))
    from weights_convert.__main__ import build_parser as convert_parser, run as convert_run
    conv = convert_parser(sub.add_parser("convert", help="convert checkpoints (as python -m weights_convert)"))
    conv.set_defaults(func=convert_run)
    from framepack_native.cli_serve import add_serve_parser
    add_serve_parser(sub)
    return parser


def _defaults(args):
    if args.command != "generate":
        return args
    demo = args.demo
    if demo and not args.extend:  # the demo model's own size, not a bucket (an extended video keeps its own)
        args.height = 64 if args.height is None else args.height
        args.width = 96 if args.width is None else args.width
    if args.seed is None:
        args.seed = 31337 if args.preset == "official" else 0
    args.steps = args.steps if args.steps is not None else (8 if demo else 25)
    if args.num_frames is None and args.seconds is None:
        if demo:
            args.num_frames = 33
        else:
            args.seconds = 5.0
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv=None):
    from framepack_native.interrupts import run_command

    STATE["unfinished"] = lambda: "no video written"
    def command():
        import warnings

        import torch
        args = _defaults(build_parser().parse_args(argv))

        def kept():  # what a failed generation keeps, when it kept anything
            said = STATE["unfinished"]() if args.func is _generate else "no video written"
            return "" if said == "no video written" else f"; {said}"

        def host_oom():
            return ("error: out of host memory (RAM); close other programs, or try a smaller --height / --width"
                    + kept())
        try:
            with warnings.catch_warnings():
                warnings.showwarning = lambda message, *rest, **kw: print(f"warning: {message}", file=sys.stderr)
                return args.func(args)
        except MemoryError:
            print(host_oom(), file=sys.stderr)
            return 1
        except torch.cuda.OutOfMemoryError as e:  # a RuntimeError, not bad input: one line and the usual remedies
            first = (str(e).strip() or "CUDA out of memory").splitlines()[0]
            if args.func is _generate:
                remedies = [flag for flag, on in (("--offload", args.offload), ("--vae-tiling", args.vae_tiling))
                            if not on] + ["a smaller --height / --width"]
                first += f"; try {', '.join(remedies)}{kept()}"
            print(f"error: {first}", file=sys.stderr)
            return 1
        except RuntimeError as e:
            if not _out_of_memory(e):
                raise
            print(host_oom(), file=sys.stderr)
            return 1

    # CheckpointError and ConversionError are ValueErrors; importing them here would load torch outside the handling
    return run_command(command, (UsageError, ValueError, OSError), lambda: STATE["unfinished"]())


if __name__ == "__main__":
    sys.exit(main())
