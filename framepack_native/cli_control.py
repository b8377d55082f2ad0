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
    from framepack_native.arguments import run_plan
    from framepack_native.conditioning import check_keyframe_embeds, plan_keyframes, plan_prompts
    from framepack_native.extension import extended_plan, read_source
    from framepack_native.image import load_image
    from framepack_native.presets import get_preset

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
        plan = run_plan(get_preset(args.preset), sampling, args.seconds, args.num_frames, args.window,
                        last_image="--last-image" in images)
        plan = extended_plan(plan, source)
        _, last = plan_keyframes(keyframes, plan, last_image=images.get("--last-image"))
        if last is not None and "--last-image" not in images:  # the end keyframe: checked as a last image
            plan = extended_plan(run_plan(get_preset(args.preset), sampling, args.seconds, args.num_frames,
                                          args.window, last_image=True), source)
        if args.prompt is not None:
            plan_prompts(args.prompt, plan, args.blend_sections)
    except ValueError as e:
        raise UsageError(str(e)) from None
