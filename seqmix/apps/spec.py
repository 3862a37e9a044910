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
    """

    name: str
    description: str
    model_class: type | None  # None: an app whose models are not built yet; only its `commands` run
    datamodule_class: type
    links: Sequence[tuple[str, str]] = ()
    commands: Mapping[str, Callable[[list[str]], int]] = field(default_factory=dict)
