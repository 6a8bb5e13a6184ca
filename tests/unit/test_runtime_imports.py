"""The package must import with only its declared runtime dependencies.

Regression: a lint autofix added a runtime `typing_extensions` import; the test
extras happen to install it, so only a plain `pip install .` showed the break.
"""

import subprocess
import sys

import pytest

BLOCK = "import sys; sys.modules['typing_extensions'] = None; "


@pytest.mark.parametrize(
    "module",
    ["kernel", "kernel.daemon.main", "kernel.demo", "kernel.bench.cli", "capabilities"],
)
def test_imports_without_typing_extensions(module):
    out = subprocess.run(
        [sys.executable, "-c", BLOCK + f"import {module}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
