"""What an application hands the CLI: its LightningModule, DataModule and extra commands."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence


@dataclass(frozen=True)
class AppSpec:
    """One application.

    ``links``: ``(source, target)`` pairs for ``parser.link_arguments(..., apply_on="instantiate")``,
    e.g. ``("data.n_classes", "model.n_classes")``, so a size the data decides is never typed twice.
    ``commands``: extra subcommands beside LightningCLI's fit/validate/test/predict, each
    called with the remaining argv and returning an exit code (e.g. ``fraud cluster``).
    A command named ``predict`` replaces LightningCLI's predict for that app.
    ``model_class`` / ``datamodule_class`` may be given as dotted paths (``"seqmix.apps.x.module.Model"``): they
    are then imported (:func:`resolve_class`) only when a Lightning command runs, so the app's own commands
    start without importing Lightning.
    """

    name: str
    description: str
    model_class: type | str | None  # None: an app whose models are not built yet; only its `commands` run
    datamodule_class: type | str
    links: Sequence[tuple[str, str]] = ()
    commands: Mapping[str, Callable[[list[str]], int]] = field(default_factory=dict)


def resolve_class(value: type | str) -> type:
    """A class given as itself or as its dotted path ``"package.module.Class"`` (imported now)."""
    if not isinstance(value, str):
        return value
    import importlib

    module, _, name = value.rpartition(".")
    return getattr(importlib.import_module(module), name)
