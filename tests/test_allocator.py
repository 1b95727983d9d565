"""replearn.allocator: glibc's malloc thresholds set on import, left alone on request."""

import os
import subprocess
import sys

import pytest

from replearn.allocator import _glibc


def _tuned(env_value):
    env = {k: v for k, v in os.environ.items() if k != "REPLEARN_MALLOC"}
    if env_value is not None:
        env["REPLEARN_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", "import replearn, replearn.allocator as a; print(a.tuned)"],
                         capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not (sys.platform.startswith("linux") and _glibc()), reason="glibc only")
def test_import_tunes_malloc_unless_told_to_leave_it():
    assert _tuned(None) == "True"  # mallopt accepted both thresholds
    assert _tuned("default") == "False"
