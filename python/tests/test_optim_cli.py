"""A step in Python is a step of the command line: natgrad.optim.NaturalGradient and KFAC with their default
settings against `natgrad train` (float64, two epochs of two minibatches in file order) on the same model,
parameters and data: the same parameters afterwards, bit for bit. ctest gives the command line's path in
NATGRAD_CLI (the test is skipped without it, outside ctest)."""
import os
import subprocess

import numpy as np
import pytest
import torch

import natgrad
import reference as ref
from natgrad.export_torch import export_data, export_model, load_safetensors

CLI = os.environ.get("NATGRAD_CLI")


@pytest.mark.skipif(not CLI, reason="NATGRAD_CLI (the natgrad command line) is not set")
@pytest.mark.parametrize("optimizer", ["natgrad", "kfac"])
def test_python_steps_equal_natgrad_train(tmp_path, optimizer):
    module, shape, x, y = ref.make("residual", samples=32)
    export_model(module, shape, "categorical", str(tmp_path))
    export_data(str(tmp_path / "data.safetensors"), x, y)
    subprocess.run([CLI, "train", "--model", str(tmp_path / "model.json"), "--weights",
                    str(tmp_path / "weights.safetensors"), "--data", str(tmp_path / "data.safetensors"),
                    "--optimizer", optimizer, "--epochs", "2", "--batch", "16", "--no-shuffle", "--dtype", "float64",
                    "--save", str(tmp_path / "trained.safetensors"), "--quiet"], check=True)
    trained = load_safetensors(str(tmp_path / "trained.safetensors"))
    make = natgrad.optim.NaturalGradient if optimizer == "natgrad" else natgrad.optim.KFAC
    opt = make(module, shape)
    for _ in range(2):
        for first in (0, 16):
            opt.step(x[first:first + 16], y[first:first + 16])
    for name, p in module.named_parameters():
        np.testing.assert_array_equal(p.detach().numpy(), trained[name].numpy(), err_msg=name)
    assert not torch.equal(ref.flat(module), ref.flat(ref.make("residual", samples=32)[0]))  # (they moved)


@pytest.mark.skipif(not CLI, reason="NATGRAD_CLI (the natgrad command line) is not set")
@pytest.mark.parametrize("dampings", [[1e-2], [1e-1, 1e-2]])
def test_solve_report_is_natgrad_solves(tmp_path, dampings):
    """Fisher.solve's report against `natgrad solve --report` on the same files: the same keys in the same
    order, at the top and in cg and solves, and the same values but for the times (and the output files only
    the command line writes)."""
    import json

    module, shape, x, y = ref.make("residual", samples=32)
    export_model(module, shape, "categorical", str(tmp_path))
    export_data(str(tmp_path / "data.safetensors"), x, y)
    damping = ",".join(repr(d) for d in dampings)
    subprocess.run([CLI, "solve", "--model", str(tmp_path / "model.json"), "--weights",
                    str(tmp_path / "weights.safetensors"), "--data", str(tmp_path / "data.safetensors"),
                    "--damping", damping, "--dtype", "float64", "--threads", "2", "--report",
                    str(tmp_path / "report.json"), "--quiet"], check=True)
    with open(tmp_path / "report.json") as f:
        cli = json.load(f)
    fisher = natgrad.Fisher(natgrad.Model.from_torch(module, shape), x, y, threads=2)
    _, report = fisher.solve(dampings if len(dampings) > 1 else dampings[0])
    for r in (cli, report):
        r.pop("timing_s")
    assert list(report) == list(cli)
    assert report == cli
