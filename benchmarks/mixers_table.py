"""The README's mixers table, made from the registry: name, paper, patterns, recurrent,
implementations, complexity, and the state kept at inference (``state_size``).

    python -m benchmarks.mixers_table   # -> benchmarks/results/mixers_table.md
"""

from __future__ import annotations

from benchmarks.common import header, markdown_table, write_result

from seqmix.core import get_mixer_class, list_mixers
from seqmix.core.mixer import build_reference_mixer

D_MODEL, N_HEADS = 512, 8


def main() -> None:
    rows = []
    for name in list_mixers():
        cls = get_mixer_class(name)
        mixer = build_reference_mixer(name, D_MODEL, N_HEADS)
        s1k, s8k = mixer.state_size(1024), mixer.state_size(8192)
        grows = "grows with T" if s8k > s1k else "constant"
        rows.append((f"`{name}`", cls.paper or "—", " ".join(sorted(cls.patterns)),
                     "yes" if cls.recurrent else "no", " ".join(cls.impls), cls.complexity or "—",
                     f"{s1k:,}", f"{s8k:,} ({grows})"))
    text = header("seqmix mixers (from the registry)",
                  notes=[f"state sizes: floats per sequence kept at inference, d_model={D_MODEL}, n_heads={N_HEADS} "
                         "(where the mixer has heads), each mixer's first test config otherwise"])
    text += markdown_table(("name", "paper", "patterns", "recurrent", "impls", "train cost",
                            "state @ T=1k", "state @ T=8k"), rows)
    print(write_result("mixers_table", text))


if __name__ == "__main__":
    main()
