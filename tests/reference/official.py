"""The official FramePack code (PyPI `framepack==0.0.9`) as a reference.

Some of its modules import cv2 and torchvision at the top (framepack/diffusers_helper/utils.py), which
cannot be installed beside this torch; the functions we compare against need neither. So those
functions are taken from the module's source by name and run in a namespace holding only torch and math.
"""
import ast
import importlib.util
import math
from pathlib import Path

import torch


def official_functions(module, names):
    """{name: function} of the top-level functions `names` of framepack module `module`, without importing it."""
    spec = importlib.util.find_spec("framepack")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root.joinpath(*module.split(".")[1:]).with_suffix(".py")
    tree = ast.parse(path.read_text(), filename=str(path))
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    missing = set(names) - {n.name for n in wanted}
    if missing:
        raise LookupError(f"{path}: no functions {sorted(missing)}")
    namespace = {"torch": torch, "math": math}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    return {n: namespace[n] for n in names}
