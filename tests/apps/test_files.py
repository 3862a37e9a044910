"""seqmix.apps.files: whole files or none."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqmix.apps.files import atomic_write, check_outputs, input_file, refuse_non_finite, save_checkpoint


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


def test_input_file_says_directory_or_missing(tmp_path):
    (tmp_path / "a.ckpt").write_text("x")
    assert input_file(str(tmp_path / "a.ckpt"), "checkpoint") == tmp_path / "a.ckpt"
    with pytest.raises(ValueError, match=r"--csv .* is a directory, not a file; give a CSV"):
        input_file(tmp_path, "--csv", "give a CSV")
    with pytest.raises(FileNotFoundError, match=r"--csv .*nope.csv does not exist$"):
        input_file(tmp_path / "nope.csv", "--csv")


def test_check_outputs_refuses_an_input_a_shared_output_or_a_directory(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("date,OT\n")
    (tmp_path / "link.csv").symlink_to(data)
    check_outputs([("--out", tmp_path / "f.csv"), ("--png", tmp_path / "f.png"), ("--extra", None)],
                  [("--csv", data), ("--ckpt", None)])
    for outputs, message in (([("--out", tmp_path / "sub" / ".." / "d.csv")], r"--out .* is the input --csv"),
                             ([("--out", tmp_path / "link.csv")], r"--out .*link.csv is the input --csv"),
                             ([("--out", tmp_path / "f.png"), ("--png", tmp_path / "f.png")],
                              r"--png .*f.png and --out .*f.png are the same file"),
                             ([("--out", tmp_path)], "is a directory; name a file to write")):
        with pytest.raises(ValueError, match=message):
            check_outputs(outputs, [("--csv", data)])
    assert data.read_text() == "date,OT\n"


def test_refuse_non_finite_names_column_and_row():
    values = np.array([[1.0, 2.0], [np.nan, np.inf], [3.0, -np.inf]])
    with pytest.raises(ValueError, match=r"x.csv: column 'a' row 1 \(0-based data row\) is nan, not a finite number "
                                         r"\(3 such values in all\); fill it"):
        refuse_non_finite(values, ["a", "b"], "x.csv", "fill it")
    with pytest.raises(ValueError, match=r"column 'b' row 1 .* is inf, .*\(2 such values"):
        refuse_non_finite(values, ["a", "b"], "x.csv", include_nan=False)
    refuse_non_finite(values[:1], ["a", "b"], "x.csv")
