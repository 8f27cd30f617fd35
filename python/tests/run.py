#!/usr/bin/env python3
"""Runs one of the package's pytest files as ctest does: python3 run.py test_x.py.

The tests need pytest, PyTorch, SciPy and NumPy (python3-pytest, python3-torch, python3-scipy, python3-numpy:
bash scripts/install-deps.sh --test). Without one of them the run ends with exit code 77, which ctest reports as
a skip, unless NATGRAD_REQUIRE_TORCH=1 (as in CI), where it is a failure like any other, as for the PyTorch
oracles in tests/. A test that pytest itself skips fails the run under NATGRAD_REQUIRE_TORCH=1 too: CI tests
everything it builds."""
import importlib
import os
import sys

required = os.environ.get("NATGRAD_REQUIRE_TORCH") == "1"
missing = []
for name in ("pytest", "torch", "scipy", "numpy"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
if missing:
    print("the Python package's tests need " + ", ".join(missing) + " (bash scripts/install-deps.sh --test)")
    sys.exit(1 if required else 77)

import pytest  # noqa: E402


class SkipCounter:
    skipped = []

    def pytest_runtest_logreport(self, report):
        if report.skipped:
            self.skipped.append(report.nodeid)


counter = SkipCounter()
code = pytest.main(["-q", "-rs", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[counter])
if code == 0 and required and counter.skipped:
    print("NATGRAD_REQUIRE_TORCH=1: tests were skipped: " + ", ".join(counter.skipped))
    code = 1
sys.exit(int(code))
