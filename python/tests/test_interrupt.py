"""Ctrl-C while natgrad computes (with the GIL released): Python's signal handler runs at the next chunk of
work, the call raises KeyboardInterrupt within a moment, and the Fisher stays usable. The signal is SIGALRM
with a handler that raises KeyboardInterrupt, as SIGINT's default handler does."""
import signal
import time

import numpy as np
import pytest
import torch.nn as nn

import natgrad


def _raise(signum, frame):
    raise KeyboardInterrupt


@pytest.fixture
def long_fisher():
    rng = np.random.default_rng(0)
    module = nn.Sequential(nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10)).double()
    x, y = rng.standard_normal((2000, 256)), rng.integers(0, 10, 2000)
    return natgrad.Fisher(natgrad.Model.from_torch(module, [256]), x, y)


@pytest.mark.parametrize("call", [lambda f: f.eigenvalues(40), lambda f: f.solve(1e-8, tol=1e-14, max_iters=100000)])
def test_a_signal_stops_the_computation(long_fisher, call):
    previous = signal.signal(signal.SIGALRM, _raise)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            call(long_fisher)
        elapsed = time.monotonic() - start
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert elapsed < 3.0  # (uninterrupted, either call runs for far longer)
    v = np.ones(long_fisher.num_params)
    assert np.all(np.isfinite(long_fisher.matvec(v)))
