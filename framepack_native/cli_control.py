"""The framepack-native generate options of per-section control (framepack_native.conditioning, extension), and their
checks before any model loads: a timestamped --prompt against the run's sections, --keyframe SECONDS:FILE,
--blend-sections, --keyframe-embeds, --extend VIDEO and --context-latents. Each failure is a UsageError."""
import math

from framepack_native.cli_checks import UsageError


def add_control_arguments(gen):
    gen.add_argument("--keyframe", action="append", default=[], metavar="SECONDS:FILE",
                     help="pin a picture to a time of the video: the section holding it starts from its latent; at "
                          "the last frame's time it is the last image; repeatable")
    gen.add_argument("--keyframe-embeds", type=float, default=0.0, metavar="W",
                     help="0..1: the weight of a keyframe's image embedding in its section's (default 0)")
    gen.add_argument("--blend-sections", type=int, default=0, metavar="N",
                     help="with a timestamped --prompt ('[0s: ...] [2s: ...]'): mix the prompts' embeddings over N "
                          "sections after each change (default 0: switch at once)")
    gen.add_argument("--extend", metavar="VIDEO",
                     help="continue this video forward (vanilla sampling); --image defaults to its first frame, "
                          "--seconds / --num-frames count the new part")
    gen.add_argument("--context-latents", type=int, default=19, metavar="N",
                     help="with --extend: latent frames of its end (4 (N - 1) + 1 frames) that condition the new "
                          "sections, 1..19 (default 19)")


def add_one_frame_arguments(gen):
    gen.add_argument("--one-frame", nargs="?", const="default", metavar="RECIPE",
                     help="generate one frame (a PNG --out) from control images: default, kisekaeichi, 1f-mc, or "
                          "musubi's options 'target_index=1,control_index=0;10,no_post,no_2x,no_4x'")
    gen.add_argument("--control-image", action="append", default=[], metavar="FILE",
                     help="with --one-frame: a control image (repeatable, in index order; default: --image); its "
                          "alpha channel, if any, is its mask")
    gen.add_argument("--control-mask", action="append", default=[], metavar="FILE",
                     help="with --one-frame: a grey mask per control image (255 referenced, 0 ignored), same size")


def check_one_frame(args):
    """--one-frame's checks: the recipe, control images and masks readable, options it does not go with."""
    from framepack_native.image import load_image
    from framepack_native.one_frame import check_recipe, image_size_of, latent_mask, parse_recipe

    if args.one_frame is None:
        if args.control_image or args.control_mask:
            raise UsageError("--control-image and --control-mask need --one-frame")
        return
    for flag, on in (("--extend", args.extend), ("--keyframe", args.keyframe), ("--last-image", args.last_image),
                     ("--resume", args.resume), ("--preview", args.preview), ("--cache", args.cache),
                     ("--teacache", args.teacache is not None), ("--magcache-calibrate", args.magcache_calibrate),
                     ("--blend-sections", args.blend_sections), ("--keyframe-embeds", args.keyframe_embeds)):
        if on:
            raise UsageError(f"--one-frame makes one picture: {flag} does not go with it")
    try:
        args.one_frame_recipe = recipe = parse_recipe(args.one_frame)
        check_recipe(recipe, len(args.control_image) or 1, args.window)
        if args.control_mask and len(args.control_mask) != (len(args.control_image) or 1):
            raise ValueError(f"{len(args.control_mask)} --control-mask for {len(args.control_image) or 1} control "
                             "images: one per image")
        for path in args.control_image:
            try:
                load_image(path)
            except ValueError as e:
                raise ValueError(f"--control-image {e}") from None
        for i, path in enumerate(args.control_mask):
            control = args.control_image[i] if args.control_image else args.image
            if control:
                try:
                    latent_mask(path, image_size_of(control), 16, 16, "stretch")
                except ValueError as e:
                    raise ValueError(f"--control-mask {path}: {e}") from None
        from framepack_native.conditioning import prompt_schedule_of
        if args.prompt is not None and prompt_schedule_of(args.prompt) is not None:
            raise ValueError("--one-frame takes a plain --prompt, not a timestamped one")
    except ValueError as e:
        raise UsageError(str(e)) from None


def run_one_frame(pipe, args, image, prompt, generator):
    """Generate the one frame and write it as the PNG --out; returns the exit code."""
    from framepack_native.cli import save_png
    frame = pipe.one_frame(image, prompt, control_images=args.control_image or None,
                           control_masks=args.control_mask or None, recipe=args.one_frame_recipe, preset=args.preset,
                           negative_prompt=args.negative_prompt, resolution=args.resolution, height=args.height,
                           width=args.width, latent_window_size=args.window, num_inference_steps=args.steps,
                           guidance_scale=args.guidance, true_cfg_scale=args.cfg, generator=generator,
                           sampler=args.sampler, output_type="uint8")
    save_png(args.out, frame[0, 0].permute(1, 2, 0).numpy())
    print(f"wrote {args.out} (one frame, {frame.shape[-1]}x{frame.shape[-2]})")
    return 0


def parse_keyframe_arg(text):
    """'SECONDS:FILE' -> (seconds, file); UsageError naming the argument."""
    seconds, sep, path = text.partition(":")
    try:
        t = float(seconds)
    except ValueError:
        t = None
    if not sep or not path or t is None or not math.isfinite(t):
        raise UsageError(f"--keyframe {text!r}: expected SECONDS:FILE, e.g. --keyframe 2.5:key.png")
    return t, path


def check_control(args, sampling, images):
    """Read the keyframes and the video to extend, and check them and a timestamped prompt against the run's
    sections; sets args.keyframes ({seconds: picture}) and args.extend_frames (frames or None)."""
    from framepack_native.conditioning import check_keyframe_embeds
    from framepack_native.extension import read_source
    from framepack_native.image import load_image

    keyframes = {}
    for text in args.keyframe:
        t, path = parse_keyframe_arg(text)
        if t in keyframes:
            raise UsageError(f"--keyframe {text!r}: a second keyframe at {t:g} s")
        try:
            keyframes[t] = load_image(path)
        except ValueError as e:
            raise UsageError(f"--keyframe {e}") from None
    args.keyframes, args.extend_frames = keyframes or None, None
    try:
        check_keyframe_embeds(args.keyframe_embeds)
        source = None
        if args.extend:
            source = read_source(args.extend, sampling, args.context_latents)
            args.extend_frames = source.frames
            if args.height is not None:
                source.check_size(args.height, args.width)
        check_plan(args.preset, sampling, args.seconds, args.num_frames, args.window, args.prompt,
                   args.blend_sections, keyframes, images.get("--last-image"), source)
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_plan(preset, sampling, seconds, num_frames, window, prompt=None, blend_sections=0, keyframes=None,
               last_image=None, source=None):
    """Check keyframes ({seconds: picture}) and a timestamped prompt against the sections of a run of these
    arguments (extending `source`, an extension.read_source, when given); ValueError naming the culprit. The CLI and
    the web app call it before anything runs."""
    from framepack_native.arguments import run_plan
    from framepack_native.conditioning import plan_keyframes, plan_prompts
    from framepack_native.extension import extended_plan
    from framepack_native.presets import get_preset

    plan = extended_plan(run_plan(get_preset(preset), sampling, seconds, num_frames, window,
                                  last_image=last_image is not None), source)
    _, last = plan_keyframes(keyframes or {}, plan, last_image=last_image)
    if last is not None and last_image is None:  # the end keyframe: checked as a last image
        plan = extended_plan(run_plan(get_preset(preset), sampling, seconds, num_frames, window, last_image=True),
                             source)
    if prompt is not None:
        plan_prompts(prompt, plan, blend_sections)
