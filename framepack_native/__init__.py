"""framepack_native: FramePack image-to-video on the HunyuanVideo backbone, in plain PyTorch."""

__version__ = "0.1.0"


def __getattr__(name):
    # FramePackPipeline pulls in every model; `import framepack_native.weights` should not.
    if name == "FramePackPipeline":
        from framepack_native.pipeline import FramePackPipeline
        return FramePackPipeline
    raise AttributeError(f"module 'framepack_native' has no attribute {name!r}")
