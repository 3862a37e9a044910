"""Name the app of checkpoints written before seqmix checkpoints named it (``seqmix_app``).

    python scripts/tag_checkpoint.py --app forecasting checkpoints/forecasting/informer_etth1.ckpt

Every app's loader (:func:`seqmix.apps.module.read_checkpoint`) refuses a checkpoint that names no
app. This script reads each file as data (``weights_only=True``: a file holding pickled objects is
refused, never run), adds the name, writes a new file beside it, reads that back and checks that
every tensor is bit-identical and every other entry equal, and only then renames it onto the old
file. Run it only on checkpoints you trust to be of that app.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from seqmix.apps.files import atomic_write, input_file
from seqmix.apps.module import APP_KEY


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t`` (so NaN == NaN and -0.0 != 0.0): ``[numel * itemsize]`` uint8."""
    return t.detach().contiguous().view(-1).view(torch.uint8)


def same(a: object, b: object) -> bool:
    """Bit-identical tensors (dtype, shape, values), equal everything else, recursively."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(bits(a), bits(b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def tag(path: Path, app: str) -> str:
    """Add ``APP_KEY: app`` to the checkpoint at ``path`` (new file, verified, renamed); what was done."""
    checkpoint = torch.load(input_file(path, "checkpoint"), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a Lightning checkpoint (no state_dict)")
    if checkpoint.get(APP_KEY) == app:
        return f"{path}: names {app} already"
    if APP_KEY in checkpoint:
        raise ValueError(f"{path}: names the app {checkpoint[APP_KEY]!r}, not {app!r}; left as it is")
    tagged = {**checkpoint, APP_KEY: app}

    def write_and_verify(tmp: Path) -> None:
        torch.save(tagged, tmp)
        back = torch.load(tmp, map_location="cpu", weights_only=True)
        if not same(back, tagged) or not same({k: v for k, v in back.items() if k != APP_KEY}, checkpoint):
            raise ValueError(f"{path}: the re-saved checkpoint differs from the original; left as it is")

    atomic_write(path, write_and_verify)
    return f"{path}: now names {app} (weights bit-identical)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", required=True, help="the app whose `fit` wrote the checkpoints (forecasting, ...)")
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.checkpoints:
        print(tag(path, args.app))
    return 0


if __name__ == "__main__":
    sys.exit(main())
