"""Register seqmix's vision backbones in timm's registry once timm is imported.

``import seqmix`` stays light (no timm, no Lightning), yet ``timm.create_model("biformer_tiny")``
works after it, whichever of the two is imported first: when timm is already imported the
backbones (``seqmix.apps.vision``) are registered at once; otherwise a finder on ``sys.meta_path``
waits for the top-level ``timm`` module to finish executing, registers them then, and removes
itself. An environment without timm never pays for it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

BACKBONES = "seqmix.apps.vision"  # importing it registers every backbone (``common.timm_variant``)


def register_backbones() -> None:
    importlib.import_module(BACKBONES)


class _RegisterAfterTimm(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds nothing itself: for ``timm`` it wraps the real loader so that the backbones are
    registered right after timm's ``__init__`` has run."""

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # once: the real finders answer from here on (and below)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__.loader = self._loader  # timm's own loader again, for reload() and resources
        module.__loader__ = self._loader
        self._loader.exec_module(module)
        register_backbones()


def install() -> None:
    """Register now if timm is imported, else on its import (called by ``import seqmix``)."""
    if "timm" in sys.modules:
        register_backbones()
    elif not any(isinstance(finder, _RegisterAfterTimm) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTimm())
