"""The package's tests need PyTorch and SciPy (python3-torch, python3-scipy: scripts/install-deps.sh --test).
Without them the run ends with exit code 77, which ctest reports as a skip, unless NATGRAD_REQUIRE_TORCH=1 (as
in CI), where it is a failure like any other, as for the PyTorch oracles in tests/."""
import importlib
import os

import pytest


def pytest_configure(config):
    missing = []
    for name in ("torch", "scipy", "numpy"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        code = 1 if os.environ.get("NATGRAD_REQUIRE_TORCH") == "1" else 77
        pytest.exit("the Python package's tests need " + ", ".join(missing) +
                    " (bash scripts/install-deps.sh --test)", returncode=code)
