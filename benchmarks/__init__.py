"""seqmix benchmarks: run each as ``python -m benchmarks.<name>`` from the repository root; they write
``benchmarks/results/<name>.md`` (+ .png). Shared helpers: ``benchmarks.common``."""
