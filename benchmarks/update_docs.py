"""Copy result tables from ``benchmarks/results/*.md`` into README.md between markers.

README.md holds blocks like::

    <!-- results:mqar -->
    ...replaced by the body of benchmarks/results/mqar.md...
    <!-- /results:mqar -->

so every number in the README is one a benchmark script wrote. Run after the benchmarks:

    python -m benchmarks.update_docs
"""

from __future__ import annotations

import re
import sys

from benchmarks.common import REPO_ROOT, RESULTS_DIR, atomic_write_text

BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def body_of(name: str) -> str:
    path = RESULTS_DIR / f"{name}.md"
    if not path.exists():
        raise SystemExit(f"update_readme: README asks for results '{name}' but {path} does not exist; "
                         f"run the benchmark that writes it first")
    text = path.read_text()
    text = re.sub(r"\A# .*\n", "", text)  # the results file's title; the README has its own heading
    text = re.sub(r"^#", "###", text, flags=re.M)  # its sections sit below the README's own headings
    # links relative to benchmarks/results/ (plots) become relative to the repository root
    text = re.sub(r"\]\((?![a-z]+:|/|#)([^)]+)\)", lambda m: f"](benchmarks/results/{m.group(1)})", text)
    return text.strip() + "\n"


def main() -> int:
    readme = REPO_ROOT / "README.md"
    text = readme.read_text()
    names = [m.group("name") for m in BLOCK.finditer(text)]
    new = BLOCK.sub(lambda m: m.group(1) + body_of(m.group("name")) + m.group(4), text)
    atomic_write_text(readme, new)
    print(f"README.md: refreshed {len(names)} result blocks: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
