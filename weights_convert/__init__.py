"""Converts the public diffusers / transformers checkpoints into native framepack_native folders.

    python -m weights_convert SRC DST [--dtype bf16|fp16|fp32] [--overwrite] [--clean-partial]
    python -m weights_convert --verify DST
"""
import importlib

_EXPORTS = {"convert": "folders", "verify": "folders", "ConversionError": "core", "Converter": "core",
            "Drop": "core", "Rule": "core", "invert": "core"}


def __getattr__(name):
    # `python -m weights_convert` imports this package first: torch then loads inside the command's Ctrl-C handling
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"weights_convert.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'weights_convert' has no attribute {name!r}")
