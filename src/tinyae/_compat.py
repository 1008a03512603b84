"""Old module paths without a file: `tinyae.tiling` and `tinyae.fast_stream` import as `tinyae.engine.tiling` and
`tinyae.engine.fast_stream` (the same module objects, so patching either name patches both).

These two have no shim file at the old path so that git sees a pure rename (branches editing tiling.py or
fast_stream.py merge into the new homes); every other old path has a shim module of its own."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

ALIASES = {"tinyae.tiling": "tinyae.engine.tiling", "tinyae.fast_stream": "tinyae.engine.fast_stream"}


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old name as the module at its new home."""

    def find_spec(self, name: str, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name in ALIASES else None

    def create_module(self, spec) -> ModuleType:
        return importlib.import_module(ALIASES[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its own name


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())


def reexport(namespace: dict, module: ModuleType) -> None:
    """Copy every name of `module` (private ones included: old callers import some) into a shim's namespace."""
    namespace.update({k: v for k, v in vars(module).items() if not (k.startswith("__") and k.endswith("__"))})
