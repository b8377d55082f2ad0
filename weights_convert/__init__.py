"""Converts the public diffusers / transformers checkpoints into native framepack_native folders.

    python -m weights_convert SRC DST [--dtype bf16|fp16|fp32] [--overwrite]
    python -m weights_convert --verify DST
"""
from weights_convert.folders import convert, verify  # noqa: F401
from weights_convert.core import ConversionError, Converter, Drop, Rule, invert  # noqa: F401
