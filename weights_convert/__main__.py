"""python -m weights_convert SRC DST [--dtype bf16|fp16|fp32|fp8] [--transformer DIR] [--image-encoder DIR]"""
import argparse
import sys

from framepack_native.interrupts import run_command

# weights_convert.folders.DTYPES and framepack_native.sections.SAMPLING_TYPES, written out so that parsing the command
# line imports no torch: its seconds of imports then run inside run_command, where Ctrl-C is one line
DTYPE_NAMES = ("bf16", "fp16", "fp32", "fp8")
SAMPLING_TYPE_NAMES = ("inverted_anti_drifting", "vanilla")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit code 2 (argparse prints the usage block too)."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser(parser=None):
    parser = parser or OneLineParser(prog="python -m weights_convert", description=__doc__)
    parser.add_argument("src", nargs="?", help="a diffusers pipeline root (model_index.json) or a component folder")
    parser.add_argument("dst", nargs="?", help="the native folder to write (a symbolic link: written in its target)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                        help="cast every floating tensor to this dtype (default: each keeps its source dtype, "
                             "losslessly; a fused one takes the widest of its sources); fp8: the transformer "
                             "blocks' Linear weights block-scaled float8 e4m3, the rest bf16")
    parser.add_argument("--transformer", metavar="DIR", help="a FramePack transformer folder (diffusers layout)")
    parser.add_argument("--image-encoder", metavar="DIR", help="flux_redux_bfl root or its image_encoder/ folder")
    parser.add_argument("--sampling-type", choices=SAMPLING_TYPE_NAMES, default=None,
                        help="the transformer's sampling (default: vanilla when its own folder's name says F1)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a DST that holds a previous conversion (any other non-empty folder is refused)")
    parser.add_argument("--clean-partial", action="store_true",
                        help="remove the work folders beside DST left by conversions that were killed")
    parser.add_argument("--verify", metavar="DIR", help="re-check a converted folder and exit")
    return parser


def _errors():
    """The exception classes that mean bad input (imported inside run_command: they pull in torch)."""
    from framepack_native.files import CheckpointError
    from weights_convert.core import ConversionError
    return CheckpointError, ConversionError, OSError


def run(args):
    """Run a parsed command line; returns the exit code. Bad input: one line on stderr, code 2."""
    return run_command(lambda: _run(args), _errors, "nothing written")


def _run(args):
    """Verify DIR, or convert SRC into DST; returns the exit code. Warnings: one line each on stderr."""
    import warnings

    from framepack_native.models.loading import read_manifest
    from weights_convert.folders import convert, verify

    if args.verify:
        manifest = verify(args.verify)
        print(f"{args.verify}: ok ({', '.join(manifest['components'])})")
        return 0
    if not args.src or not args.dst:
        print("error: SRC and DST are required (or --verify DIR)", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *rest, **kw: print(f"warning: {message}", file=sys.stderr)
        dst = convert(args.src, args.dst, args.dtype, transformer=args.transformer, image_encoder=args.image_encoder,
                      overwrite=args.overwrite, sampling_type=args.sampling_type, clean_partial=args.clean_partial)
    manifest = read_manifest(dst)
    sampling = (f" (sampling type {manifest['sampling_type']}: {manifest['sampling_type_source']})"
                if manifest.get("sampling_type_source") else "")
    print(f"wrote {dst}{sampling}")
    return 0


def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
