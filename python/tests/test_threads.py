"""natgrad's thread count in Python, as docs/python.md says: threads=None is natgrad.num_threads(), which is
OMP_NUM_THREADS (its first number) if set, else every core this process may run on — whatever PyTorch's own
count is, also after torch.set_num_threads — unless natgrad.set_num_threads changed it; an explicit threads=
wins. Each case runs in a fresh interpreter, since the count is fixed when natgrad is imported."""
import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, sys, torch, torch.nn as nn
torch.set_num_threads(1)           # PyTorch's count does not decide natgrad's
import natgrad
if len(sys.argv) > 1:
    natgrad.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
module = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
fisher = natgrad.Fisher(natgrad.Model.from_torch(module, [4]), x, y)
_, report = fisher.solve(1e-2)
_, three = natgrad.Fisher(natgrad.Model.from_torch(module, [4]), x, y, threads=3).solve(1e-2)
opt = natgrad.optim.NaturalGradient(module, [4], threads=None)
opt.step(x, y)
print(json.dumps({"num_threads": natgrad.num_threads(), "fisher": report["threads"], "explicit": three["threads"],
                  "optimizer": opt.last_step["threads"]}))
"""


def probe(omp=None, set_to=None):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    args = [sys.executable, "-c", PROBE] + ([str(set_to)] if set_to is not None else [])
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("omp, set_to, expected", [
    (None, None, len(os.sched_getaffinity(0))),   # all the cores this process may run on
    ("3", None, 3),                                # OMP_NUM_THREADS
    ("5,2", None, 5),                              # its first number (nested levels)
    ("3", 2, 2),                                   # natgrad.set_num_threads wins
])
def test_the_default_count_is_the_documented_one(omp, set_to, expected):
    r = probe(omp, set_to)
    assert r == {"num_threads": expected, "fisher": expected, "explicit": 3, "optimizer": expected}
