"""seqmix.apps.files: whole files or none."""

from __future__ import annotations

import pytest
import torch

from seqmix.apps.files import atomic_write, save_checkpoint


def test_atomic_write_renames_a_whole_file_and_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "sub" / "report.html"
    seen = []
    atomic_write(out, lambda tmp: (seen.append(tmp.name), tmp.write_text("whole")))
    assert out.read_text() == "whole" and seen[0].startswith(".report.") and seen[0].endswith(".tmp.html")

    def fails(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(out, fails)
    assert out.read_text() == "whole" and sorted(p.name for p in out.parent.iterdir()) == ["report.html"]


def test_save_checkpoint_refuses_a_file_over_the_cap(tmp_path):
    size = save_checkpoint({"w": torch.zeros(10)}, tmp_path / "a.ckpt")
    assert size == (tmp_path / "a.ckpt").stat().st_size and torch.equal(torch.load(tmp_path / "a.ckpt")["w"],
                                                                        torch.zeros(10))
    with pytest.raises(ValueError, match=r"b.ckpt: the checkpoint would be .* MB > 0.001 MB; train less"):
        save_checkpoint({"w": torch.zeros(1000)}, tmp_path / "b.ckpt", max_bytes=1000, too_big="train less")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]
