"""Every mixer family, one module each. Importing this package registers them all.

A new mixer is a new module here with a ``@register_mixer("name")`` class; it is
picked up by :func:`seqmix.core.list_mixers` and the generic tests without any edit
to this file.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
