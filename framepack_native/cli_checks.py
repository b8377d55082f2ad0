"""The framepack-native command's checks before any model loads: numbers and their ranges, the device, the input
images, --out and its run state, the cache and LoRA options. Each failure is a UsageError: one line, exit code 2."""
import os
import re
from pathlib import Path

FPS = 30
DTYPES = ("bf16", "fp16", "fp32", "fp8")  # fp8: the transformer blocks in fp8, the rest as the preset


def torch_dtype(name):
    """--dtype NAME -> the torch compute dtype (None: the preset's, also for fp8, which computes in the preset's)."""
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": None, None: None}[name]
PRESET_NAMES = ("official", "diffusers")  # framepack_native.presets.PRESETS, without importing torch at start-up
MAX_SECONDS = 120          # FramePack's demo: video length 1..120 s
MAX_FRAMES = MAX_SECONDS * FPS
MAX_WINDOW = 33            # FramePack's demo: latent window size 1..33
MAX_STEPS = 1000
MAX_SIZE = 4096            # pixels, height and width
MAX_GUIDANCE = 100.0       # --guidance and --cfg (the official app's sliders: 1..32)
SEED_RANGE = (-2**63, 2**64 - 1)  # what torch.Generator.manual_seed accepts



class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


def _check_range(flag, value, low, high):
    """UsageError unless low <= value <= high; the message states the range."""
    if not low <= value <= high:
        low, high, value = (f"{v:g}" if isinstance(v, float) else v for v in (low, high, value))
        raise UsageError(f"{flag} must be between {low} and {high}, got {value}")


def _check_device(text):
    """UsageError unless text is cpu, cuda or cuda:N with N an existing CUDA device."""
    import torch

    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", text)
    if match is None:
        raise UsageError(f"--device {text!r}: not a device this runs on (cpu, cuda or cuda:N)")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available here (use --device cpu)")
        count = torch.cuda.device_count()
        if int(match.group(1) or 0) >= count:
            raise UsageError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")


def _check_args(args):
    """Cheap checks before any model loads: numbers, sizes, modes, the device, files, the output folder."""
    from framepack_native.image import load_image
    from framepack_native.arguments import check_arguments
    from framepack_native.video import CRF_RANGE

    from framepack_native.presets import get_preset

    if args.num_frames is None:
        _check_range("--seconds", args.seconds, 1 / FPS, MAX_SECONDS)
    frames = args.num_frames if args.num_frames is not None else round(args.seconds * FPS)
    limits = [("--num-frames", frames, 1, MAX_FRAMES), ("--window", args.window, 1, MAX_WINDOW),
              ("--steps", args.steps, 1, MAX_STEPS), ("--seed", args.seed, *SEED_RANGE),
              ("--crf", args.crf, *CRF_RANGE)]
    limits += [(flag, value, 16, MAX_SIZE) for flag, value in (("--height", args.height), ("--width", args.width))
               if value is not None]
    for flag, value, low, high in limits:
        _check_range(flag, value, low, high)
    sampling = args.sampling
    if sampling is None and not args.demo and args.model and (Path(args.model) / "manifest.json").is_file():
        from framepack_native.models.loading import read_manifest
        from framepack_native.weights import CheckpointError
        try:  # the model's own sampling, before anything loads (a damaged manifest is reported by the load)
            sampling = read_manifest(args.model).get("sampling_type")
        except CheckpointError:
            pass
    try:  # the pipeline's own checks
        sampler = args.sampler or get_preset(args.preset).sampler
        check_arguments(args.prompt or "", args.last_image, args.height, args.width, args.num_frames, args.window,
                        args.steps, sampling or "inverted_anti_drifting", sampler, args.seconds, args.negative_prompt)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.teacache is not None:
        _check_range("--teacache", args.teacache, 0.0, 10.0)
    from framepack_native.caches import cache_from_args
    from framepack_native.lora import check_lora_file, parse_lora_arg
    try:
        args.cache_config = cache_from_args(args)
        args.loras = [parse_lora_arg(text) for text in args.lora]
        for path, _ in args.loras:
            check_lora_file(path)  # a missing file, a pickle, a damaged header: before any model loads
    except ValueError as e:
        raise UsageError(str(e)) from None
    _check_range("--guidance", args.guidance, 0.0, MAX_GUIDANCE)  # the app's sliders stop at 32
    _check_range("--cfg", args.cfg, 0.0, MAX_GUIDANCE)
    _check_device(args.device)
    keyframe_files = [text.partition(":")[2] for text in args.keyframe]
    _check_out(Path(args.out), [args.image, args.last_image, args.extend, *keyframe_files, *args.control_image,
                                   *args.control_mask], suffix=".png" if args.one_frame is not None else ".mp4")
    state = state_folder(args.out)
    if state.exists() and (state.is_symlink() or not state.is_dir()):
        raise UsageError(f"{state}: the run state's folder for --out {args.out} exists and is not a folder")
    if args.resume and not (state / "state.json").is_file():
        raise UsageError(f"--resume: no saved run for --out {args.out} (no {state / 'state.json'})")
    if not args.resume and (state / "state.json").is_file():  # a new run would replace the stopped one's sections
        raise UsageError(f"{state} holds a stopped run for --out {args.out}: add --resume to continue it, or delete "
                         f"{state} to start again")
    if args.resume and args.magcache_calibrate:
        raise UsageError("--magcache-calibrate must see every section of the run: it does not go with --resume")
    if args.preview:
        _check_out(Path(args.preview), [args.image, args.last_image, args.extend, *keyframe_files,
                                        *args.control_image, *args.control_mask], suffix=".png",
                   what="--preview")
    if not args.demo:
        if not args.model or not (args.image or args.extend) or args.prompt is None:
            raise UsageError("--model, --image (or --extend) and --prompt are required (or --demo)")
        if not Path(args.model).is_dir():
            raise UsageError(f"--model {args.model}: no such folder")
    images = {}
    for flag, path in (("--image", args.image), ("--last-image", args.last_image)):
        if path:
            try:
                images[flag] = load_image(path)
            except ValueError as e:
                raise UsageError(f"{flag} {e}") from None
    from framepack_native.cli_control import check_control, check_one_frame
    check_one_frame(args)
    check_control(args, sampling or "inverted_anti_drifting", images)
    return frames, images


def state_folder(out):
    """Where the run state of --out OUT is kept while it runs (OUT.state, beside it); removed once OUT is complete."""
    return Path(f"{out}.state")


def _check_out(out, inputs, suffix=".mp4", what="--out"):
    """--out must name a new or regular .mp4 file we can create beside it (as the video's temporary is made);
    --preview the same with .png."""
    if out.suffix.lower() != suffix:
        raise UsageError(f"{what} {out}: " + ("the video is H.264 in an mp4 container; name the file .mp4"
                                             if suffix == ".mp4" else ("the preview" if what == "--preview" else "--one-frame's picture")
                                             + " is a PNG; name the file .png"))
    if out.is_symlink():
        raise UsageError(f"{what} {out}: is a symbolic link; name the file itself (it would be replaced, not written "
                         "through)")
    if out.is_dir():
        raise UsageError(f"{what} {out}: is a folder")
    if out.exists() and not out.is_file():
        raise UsageError(f"{what} {out}: is not a regular file (a device, FIFO or socket); name a new or regular file")
    for name in inputs:
        if name and Path(name).exists() and out.exists() and os.path.samefile(name, out):
            raise UsageError(f"{what} {out}: is the input image {name}")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise UsageError(f"{what} {out}: folder {out.parent} does not exist or is not writable")
    from framepack_native.files import check_writable
    try:
        check_writable(out)
    except OSError as e:
        raise UsageError(f"{what} {out}: cannot create a file beside it ({e.strerror})") from None
