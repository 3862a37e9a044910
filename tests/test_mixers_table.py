"""`seqmix mixers`: each mixer's kernel ops and test files, read from the code (not a typed table)."""

from pathlib import Path

import pytest

from seqmix.cli import main
from seqmix.core import list_mixers

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows():
    """The printed table as {name: {column: cell}} (a wide terminal, so that no cell wraps)."""
    import io

    from rich.console import Console

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rich.console.Console", lambda: Console(file=out, width=400))
        main(["mixers"])
    lines = [line for line in out.getvalue().splitlines() if line.startswith(("┃", "│"))]
    columns = [c.strip() for c in lines[0].strip("┃").split("┃")]
    table = {}
    for line in lines[1:]:
        cells = dict(zip(columns, (c.strip() for c in line.strip("│").split("│"))))
        table[cells["name"]] = cells
    return table


def test_every_mixer_has_a_row_with_its_kernel_ops_and_tests(rows):
    assert sorted(rows) == sorted(list_mixers())
    assert rows["gla"]["kernel ops"] == "gla"
    assert rows["gla"]["tests"].split() == ["kernels/test_gla.py", "kernels/test_triton_gla.py"]
    assert rows["lstm"]["kernel ops"] == rows["slstm"]["kernel ops"] == "rnn"
    assert rows["softmax"]["kernel ops"] == "attention"
    assert rows["bra"]["kernel ops"] == "-" and rows["bra"]["tests"] == "core/test_biformer.py"


def test_every_named_kernel_op_and_test_file_exists(rows):
    for name, row in rows.items():
        for op in row["kernel ops"].split():
            assert op == "-" or (REPO / "seqmix" / "kernels" / op / "__init__.py").is_file(), f"{name}: no kernel package {op}"
        for test in row["tests"].split():
            assert test == "-" or (REPO / "tests" / test).is_file(), f"{name}: {test} does not exist"
