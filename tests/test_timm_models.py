"""`import seqmix` registers nothing in timm; `import seqmix.timm_models` registers the vision backbones."""

from __future__ import annotations

import subprocess
import sys

# one fresh interpreter: seqmix alone, then timm (nothing registered), then seqmix.timm_models
SCRIPT = """
import sys
import seqmix
assert not {"timm", "pytorch_lightning", "seqmix.apps.vision"} & set(sys.modules), sorted(sys.modules)
assert not any(type(f).__module__.startswith("seqmix") for f in sys.meta_path), sys.meta_path
import timm
print(timm.is_model("biformer_tiny"), type(timm.__spec__.loader).__name__)
import seqmix.timm_models
print(timm.is_model("seqmix_mambaout_femto"), type(timm.create_model("biformer_tiny_28")).__name__)
"""


def test_import_seqmix_registers_nothing_and_seqmix_timm_models_registers_the_backbones():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "SourceFileLoader", "True", "BiFormer"]
