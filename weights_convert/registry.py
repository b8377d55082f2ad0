"""Discovers the component converters: every module of this package that defines CONVERTER."""
import functools
import importlib
import pkgutil

import weights_convert

NOT_COMPONENTS = {"core", "registry", "folders", "__main__"}


@functools.lru_cache(maxsize=None)
def converters():
    """All registered Converters, in module-name order."""
    found = []
    for info in sorted(pkgutil.iter_modules(weights_convert.__path__), key=lambda m: m.name):
        if info.name in NOT_COMPONENTS:
            continue
        module = importlib.import_module(f"weights_convert.{info.name}")
        conv = getattr(module, "CONVERTER", None)
        if conv is not None:
            found.append(conv)
    return tuple(found)
