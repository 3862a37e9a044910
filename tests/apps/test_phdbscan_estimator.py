"""PHDBSCAN passes scikit-learn's estimator checks (``check_estimator``, legacy checks included).

Every check applies to a density clusterer as it stands, so none is declared expected-to-fail
(``EXPECTED_FAILED_CHECKS`` is empty: a new failure fails this test instead of hiding).
"""

from __future__ import annotations

import os
import subprocess
import sys

import faiss
from sklearn.utils.estimator_checks import parametrize_with_checks

from seqmix.apps.fraud.hdbscan import PHDBSCAN

faiss.omp_set_num_threads(1)

EXPECTED_FAILED_CHECKS: dict[str, str] = {}  # check name -> why it cannot apply to PHDBSCAN

# scipy reads SCIPY_ARRAY_API once, when it is imported, and the array-API check skips itself without it:
# that check runs in an interpreter started with it
ARRAY_API = """
from sklearn.utils.estimator_checks import check_estimator
from seqmix.apps.fraud.hdbscan import PHDBSCAN
for result in check_estimator(PHDBSCAN(min_cluster_size=5), on_fail=None, on_skip=None):
    if result["check_name"].startswith("check_array_api_input"):
        print(result["status"], result["exception"])
"""


@parametrize_with_checks([PHDBSCAN(min_cluster_size=5)], expected_failed_checks=lambda _: EXPECTED_FAILED_CHECKS)
def test_scikit_learn_estimator_checks(estimator, check):
    if getattr(check, "func", check).__name__ == "check_array_api_input" and "SCIPY_ARRAY_API" not in os.environ:
        out = subprocess.run([sys.executable, "-c", ARRAY_API], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "SCIPY_ARRAY_API": "1"})
        assert out.returncode == 0 and out.stdout.split() == ["passed", "None"], out.stdout + out.stderr[-2000:]
        return
    check(estimator)
