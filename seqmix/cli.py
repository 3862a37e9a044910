"""``seqmix <app> fit|validate|test|predict --config configs/<app>/<exp>.yaml`` and ``seqmix mixers``.

Callable in-process as ``seqmix.cli.main([...])`` (tests do, to avoid a new interpreter
and Lightning's import cost per run).

An error in the user's input (:data:`USER_ERRORS`) ends a command with its one-line message as
``SystemExit`` ("seqmix <app> <command>: error: ..."); ``SEQMIX_TRACEBACK=1`` lets it propagate
with its traceback instead.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
import sys
from pathlib import Path
from typing import Sequence

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
REPO = Path(__file__).resolve().parents[1]  # a checkout: configs/<app>/*.yaml beside the package
# what seqmix raises for a problem in the user's input (a missing or malformed file, a bad value):
# its message names the problem and the fix, so the command line prints that line, not a traceback.
# Anything else (a RuntimeError from torch, ...) keeps its traceback.
USER_ERRORS = (FileNotFoundError, ValueError)
TRACEBACK_ENV = "SEQMIX_TRACEBACK"


def list_apps() -> list[str]:
    import seqmix.apps

    return sorted(m.name for m in pkgutil.iter_modules(seqmix.apps.__path__) if m.ispkg)


def load_app(name: str):
    """The :class:`~seqmix.apps.spec.AppSpec` of app ``name`` (imports only that app)."""
    apps = list_apps()
    if name not in apps:
        close = difflib.get_close_matches(name, apps, n=2)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SystemExit(f"seqmix: unknown app {name!r}.{hint} Apps: {apps}; or `seqmix mixers`.")
    return importlib.import_module(f"seqmix.apps.{name}.app").APP


def print_mixers() -> None:
    """The registry as a table: name, class, patterns, recurrent, impls, state floats per sequence, and where
    each mixer lives: its module, the kernel ops it calls (``seqmix/kernels/<op>/``: naive.py is the
    reference) and its own test files (every mixer also passes tests/core/test_mixers_generic.py).
    The last two are read from the code, not typed: the ``seqmix.kernels.<op>`` packages the mixer's module
    imports, and the tests named after its module (tests/core/test_<module>.py) or its ops
    (tests/kernels/test_<op>.py, test_triton_<op>.py)."""
    import ast
    import inspect

    from rich.console import Console
    from rich.table import Table

    from seqmix.core import get_mixer_class, list_mixers
    from seqmix.core.mixer import build_reference_mixer

    def kernel_ops(module_file: str) -> list[str]:
        tree = ast.parse(Path(module_file).read_text())
        modules = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        names = {m.split(".")[2] for m in modules if m.startswith("seqmix.kernels.") and m.count(".") >= 2}
        return sorted(n for n in names if (REPO / "seqmix" / "kernels" / n / "__init__.py").is_file())  # ops only

    def test_files(module_stem: str, ops: list[str]) -> list[str]:
        tests = REPO / "tests"
        candidates = [tests / "core" / f"test_{module_stem}.py"]
        candidates += [path for op in ops for kind in ("", "_triton")
                       for path in sorted((tests / "kernels").glob(f"test{kind}_{op}*.py"))]  # test_<op>[_<what>].py
        return [str(path.relative_to(tests)) for path in candidates if path.is_file()]

    d_model, heads = 256, 4
    table = Table(title=f"seqmix mixers (state sizes for d_model={d_model}, n_heads={heads}; kernels: "
                        "seqmix/kernels/<op>/, tests: tests/<file>, and every mixer in core/test_mixers_generic.py)")
    names = list_mixers()
    table.add_column("name", no_wrap=True, min_width=max(map(len, names)))  # never cut a name short
    for col in ("class", "module", "patterns", "recurrent", "impls", "state @T=1k", "state @T=8k", "kernel ops",
                "tests"):
        table.add_column(col, overflow="fold")
    for name in names:
        cls = get_mixer_class(name)
        module_file = inspect.getsourcefile(cls)
        ops = kernel_ops(module_file)
        mixer = build_reference_mixer(name, d_model, heads)
        table.add_row(name, cls.__name__, cls.__module__.rsplit(".", 1)[-1] + ".py", " ".join(sorted(cls.patterns)),
                      "yes" if cls.recurrent else "no", " ".join(cls.impls), f"{mixer.state_size(1024):,}",
                      f"{mixer.state_size(8192):,}", " ".join(ops) or "-",
                      " ".join(test_files(Path(module_file).stem, ops)) or "-")
    Console().print(table)


def usage() -> str:
    return (
        "usage: seqmix <app> {fit,validate,test,predict,...} --config configs/<app>/<exp>.yaml\n"
        "       seqmix mixers\n"
        f"apps: {', '.join(list_apps())}"
    )


def app_cli(app, argv: Sequence[str], *, run: bool = True):
    """The app's LightningCLI over ``argv``. With ``run=False`` it parses and instantiates only
    (``argv`` then has no subcommand) and the caller drives ``cli.trainer`` / ``cli.model``.
    """
    from pytorch_lightning.cli import LightningCLI

    from seqmix.apps.spec import resolve_class
    from seqmix.apps.training import InterruptCheckpoint, RunConfig, last_checkpoint, run_callbacks

    class AppCLI(LightningCLI):
        def fit(self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None,
                weights_only=None) -> None:
            """``trainer.fit`` with ``--ckpt_path last`` found across this run name's version folders, and an
            interruption that saved a checkpoint raised as ``TrainingInterrupted`` instead of a silent exit."""
            if ckpt_path == "last":
                ckpt_path = last_checkpoint(self.trainer)
            try:
                self.trainer.fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path,
                                 weights_only=weights_only)
            except SystemExit as stop:  # Lightning's SIGTERMException, or its sys.exit(1) after Ctrl-C
                saved = next(cb.saved for cb in self.trainer.callbacks if isinstance(cb, InterruptCheckpoint))
                if saved is None:
                    raise
                raise saved from stop

        def add_arguments_to_parser(self, parser):
            for source, target in app.links:
                parser.link_arguments(source, target, apply_on="instantiate")

        def parse_arguments(self, parser, args):
            # the arguments travel in `args`; LightningCLI warns ("not recommended to provide both args and
            # command line arguments") whenever sys.argv holds any too, as it does under `seqmix <app> ...`.
            # sys.argv is hidden for the parse only: DDP (`--trainer.strategy ddp`) relaunches it per rank
            saved_argv, sys.argv = sys.argv, sys.argv[:1]
            try:
                super().parse_arguments(parser, args)
            finally:
                sys.argv = saved_argv

    return AppCLI(
        resolve_class(app.model_class),
        resolve_class(app.datamodule_class),
        args=list(argv),
        subclass_mode_model=False,
        subclass_mode_data=False,
        save_config_callback=RunConfig,
        trainer_defaults={
            "default_root_dir": f"runs/{app.name}",
            "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                       "init_args": {"save_dir": f"runs/{app.name}", "name": run_name(argv)}},
            "callbacks": run_callbacks(),
        },
        auto_configure_optimizers=False,
        parser_kwargs={"prog": f"seqmix {app.name}"},
        run=run,
    )


def run_name(argv: Sequence[str]) -> str:
    """The default logger's run name: the experiment's config file name (the last ``--config``), so that
    ``configs/<app>/<exp>.yaml`` runs land in ``runs/<app>/<exp>/version_N`` and ``--ckpt_path last`` finds them."""
    configs = [value for flag, value in zip(argv, argv[1:]) if flag in ("-c", "--config")]
    configs += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    return Path(configs[-1]).stem if configs else "lightning_logs"


def config_hint(app_name: str, subcommand: str | None, argv: Sequence[str]) -> str:
    """For a LightningCLI usage error in a run without ``--config``: the line naming the app's
    configs (``configs/<app>/*.yaml`` of this checkout), which hold every experiment's model choice."""
    if subcommand not in LIGHTNING_COMMANDS or any(a in ("-c", "--config") or a.startswith("--config=")
                                                   for a in argv):
        return ""
    folder = REPO / "configs" / app_name
    configs = sorted(p.stem for p in folder.glob("*.yaml"))
    if not configs:
        return ""
    shown = os.path.relpath(folder) if folder.is_relative_to(Path.cwd()) else str(folder)
    return (f"seqmix {app_name} {subcommand}: every experiment is a config: seqmix {app_name} {subcommand} "
            f"--config {shown}/<name>.yaml, <name> one of {', '.join(configs)}")


def run_lightning(app, argv: Sequence[str]) -> int:
    from seqmix.apps.training import TrainingInterrupted

    try:
        cli = app_cli(app, argv)  # a data-parallel run's process group ends at exit (StagedModule.setup registers it)
    except TrainingInterrupted as stop:
        raise SystemExit(f"seqmix {app.name} fit: {stop}; resume with: {resume_command(app.name, argv, stop.path)}")
    if cli.subcommand == "fit" and cli.trainer.is_global_zero:
        for line in checkpoint_lines(app.name, cli.trainer):
            print(line)
    return 0


def checkpoint_lines(app_name: str, trainer) -> list[str]:
    """After ``fit``: where each checkpoint callback put its best (and last) checkpoint, the file
    ``predict --ckpt`` / ``test --ckpt_path`` take."""
    lines = []
    for callback in trainer.checkpoint_callbacks:
        if callback.best_model_path:
            chosen = f"best by {callback.monitor}" if callback.monitor else "latest"
            lines.append(f"seqmix {app_name} fit: checkpoint ({chosen}) {callback.best_model_path}")
        if callback.last_model_path and callback.last_model_path != callback.best_model_path:
            lines.append(f"seqmix {app_name} fit: checkpoint (last) {callback.last_model_path}")
    return lines


def resume_command(app_name: str, argv: Sequence[str], checkpoint: Path) -> str:
    """The command line that resumes the interrupted ``seqmix <app> <argv>`` from ``checkpoint``."""
    import shlex

    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--ckpt_path="):
            skip = False
            continue
        skip = arg == "--ckpt_path"
        if not skip:
            kept.append(arg)
    return shlex.join(["seqmix", app_name, *kept, "--ckpt_path", str(checkpoint)])


LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry", "null")  # --ckpt_path values that name no file


def check_ckpt_path(app, argv: Sequence[str]) -> None:
    """``--ckpt_path <file>`` of a Lightning command goes through the apps' one checkpoint check before
    Lightning reads it (:func:`seqmix.apps.module.read_checkpoint`: ``weights_only=True``, this app's
    checkpoint, one-line errors for a directory, a truncated or foreign file). Lightning's own names
    (``last``, ``best``, ...) are left to Lightning."""
    from seqmix.apps.module import read_checkpoint

    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--ckpt_path=") else \
            argv[i + 1] if arg == "--ckpt_path" and i + 1 < len(argv) else None
        if value is not None and value not in LIGHTNING_CKPT_NAMES and not value.startswith("registry:"):
            read_checkpoint(value, app.name, f"give a checkpoint of `seqmix {app.name} fit`")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "mixers":
        print_mixers()
        return 0
    app = load_app(command)
    subcommand = rest[0] if rest and not rest[0].startswith("-") else None
    choices = sorted(set(LIGHTNING_COMMANDS) | set(app.commands))
    if subcommand is not None and subcommand not in choices:
        raise SystemExit(f"seqmix {app.name}: unknown command {subcommand!r}; choose one of {choices}")
    try:
        if subcommand in app.commands:
            return app.commands[subcommand](rest[1:])
        if app.model_class is None:
            raise SystemExit(f"seqmix {app.name}: {subcommand or 'fit|validate|test|predict'} needs the app's models, "
                             f"which are not built yet; the commands available now: {sorted(app.commands)}")
        check_ckpt_path(app, rest)
        try:
            return run_lightning(app, rest)
        except SystemExit as usage_error:  # jsonargparse's: the usage and the error are printed already
            hint = config_hint(app.name, subcommand, rest)
            if usage_error.code == 2 and hint:
                print(hint, file=sys.stderr)
            raise
    except USER_ERRORS as error:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        where = " ".join(["seqmix", app.name, *([subcommand] if subcommand else [])])
        raise SystemExit(f"{where}: error: {error}\n({TRACEBACK_ENV}=1 shows the traceback)") from error


if __name__ == "__main__":
    sys.exit(main())
