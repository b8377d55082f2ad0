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


def official_functions(module, names, extra_globals=None):
    """{name: function} of the top-level functions `names` of framepack module `module`, without importing it.

    extra_globals: more names the functions need (e.g. {"Image": PIL.Image, "np": numpy})."""
    spec = importlib.util.find_spec("framepack")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root.joinpath(*module.split(".")[1:]).with_suffix(".py")
    tree = ast.parse(path.read_text(), filename=str(path))
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    missing = set(names) - {n.name for n in wanted}
    if missing:
        raise LookupError(f"{path}: no functions {sorted(missing)}")
    namespace = {"torch": torch, "math": math, **(extra_globals or {})}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    return {n: namespace[n] for n in names}


def official_transformer_class():
    """framepack's HunyuanVideoTransformer3DModelPacked (the model the official app runs, with its TeaCache).

    Its module imports `accelerate` (not installed; only the import is needed) and framepack's utils (cv2,
    torchvision: not installable here; only `zero_module` is used): both stand in as stubs while it imports.
    """
    import sys
    import types

    import diffusers.loaders  # noqa: F401 (imported for real before the stub hides accelerate from diffusers)
    import diffusers.models.modeling_utils  # noqa: F401

    def zero_module(module):
        for p in module.parameters():
            p.detach().zero_()
        return module

    accelerate = types.ModuleType("accelerate")
    accelerate.accelerator = types.ModuleType("accelerate.accelerator")
    utils = types.ModuleType("framepack.diffusers_helper.utils")
    utils.zero_module = zero_module
    stubs = {"accelerate": accelerate, "accelerate.accelerator": accelerate.accelerator,
             "framepack.diffusers_helper.utils": utils}
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        from framepack.diffusers_helper.models.hunyuan_video_packed import HunyuanVideoTransformer3DModelPacked
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return HunyuanVideoTransformer3DModelPacked


def official_forward(model, inputs):
    """The official model's forward on our (diffusers-named) inputs, batch 1; returns (B, C, T, H, W)."""
    names = {"latents_clean": "clean_latents", "indices_latents_clean": "clean_latent_indices",
             "latents_history_2x": "clean_latents_2x", "indices_latents_history_2x": "clean_latent_2x_indices",
             "latents_history_4x": "clean_latents_4x", "indices_latents_history_4x": "clean_latent_4x_indices",
             "indices_latents": "latent_indices", "image_embeds": "image_embeddings"}
    args = {names.get(k, k): v[None] if k.startswith("indices") else v for k, v in inputs.items()}
    return model(**args, return_dict=False)[0]
