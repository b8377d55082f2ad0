"""framepack_native: FramePack image-to-video on the HunyuanVideo backbone, in plain PyTorch."""

__version__ = "0.1.0"
