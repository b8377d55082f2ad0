"""The framepack-native command: generate a video, or convert checkpoints."""
import argparse
import sys


def _generate(args):
    if args.demo:
        print("framepack-native generate --demo: the demo pipeline (a tiny FramePack with random weights, "
              "a bundled image and prompt) comes with the pipeline, which is not built yet; nothing written.")
        return 0
    print("error: generation needs the FramePack pipeline, which is not built yet", file=sys.stderr)
    return 2


def build_parser():
    parser = argparse.ArgumentParser(prog="framepack-native", description="FramePack image-to-video in PyTorch")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="image + prompt -> mp4")
    gen.add_argument("--demo", action="store_true", help="run the built-in demo (random weights, no download)")
    gen.add_argument("--out", default="out.mp4", help="output video path")
    gen.set_defaults(func=_generate)
    from weights_convert.__main__ import build_parser as convert_parser, run as convert_run
    conv = convert_parser(sub.add_parser("convert", help="convert reference checkpoints (python -m weights_convert)"))
    conv.set_defaults(func=convert_run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
