"""Model.load against Model.from_torch (the same tracer, through files or in memory), arrays in and out
(NumPy or torch, the type given), batch norm's buffers, and the refusals: wrong shapes, wrong targets, devices
other than the CPU, unsupported modules, and a Fisher whose module PyTorch has changed since."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import natgrad
import reference as ref
from natgrad.export_torch import export_model


def test_load_reads_what_from_torch_traces(tmp_path):
    module, shape, x, y = ref.make("residual")
    export_model(module, shape, "categorical", str(tmp_path))
    loaded = natgrad.Model.load(tmp_path / "model.json", tmp_path / "weights.safetensors")
    traced = natgrad.Model.from_torch(module, shape)
    assert loaded.num_params == traced.num_params == ref.flat(module).numel()
    assert loaded.parameter_names == [n for n, _ in module.named_parameters()]
    a = natgrad.Fisher(loaded, x.numpy(), y.numpy())
    b = natgrad.Fisher(traced, x, y)
    loss, g = ref.loss_and_gradient(module, x, y)
    assert a.loss == pytest.approx(loss, rel=1e-12)
    assert isinstance(a.gradient(), np.ndarray) and isinstance(b.gradient(), torch.Tensor)
    np.testing.assert_array_equal(a.gradient(), b.gradient().numpy())  # same model, same bits
    assert np.linalg.norm(a.gradient() - g.numpy()) <= 1e-10 * np.linalg.norm(g.numpy())


def test_loaded_model_keeps_its_parameters(tmp_path):
    module, shape, x, y = ref.make("mlp")
    export_model(module, shape, "categorical", str(tmp_path))
    loaded = natgrad.Model.load(tmp_path / "model.json", tmp_path / "weights.safetensors")
    before = natgrad.Fisher(loaded, x, y).loss
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(2)
    assert natgrad.Fisher(loaded, x, y).loss == before


def test_batch_norm_in_eval_mode_uses_its_running_statistics():
    torch.manual_seed(4)
    module = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).double()
    module.train()
    module(torch.randn(64, 4))  # running statistics away from their initial values
    module.eval()
    x, y = torch.randn(7, 4), torch.randint(0, 3, (7,))
    fisher = natgrad.Fisher(natgrad.Model.from_torch(module, [4]), x, y)
    loss, g = ref.loss_and_gradient(module, x, y)
    assert fisher.loss == pytest.approx(loss, rel=1e-12)
    assert np.linalg.norm(fisher.gradient().numpy() - g.numpy()) <= 1e-10 * np.linalg.norm(g.numpy())


def test_gradient_as_a_state_dict():
    module, shape, x, y = ref.make("mlp")
    fisher = natgrad.Fisher(natgrad.Model.from_torch(module, shape), x, y)
    named = fisher.gradient(as_dict=True)
    _, g = ref.loss_and_gradient(module, x, y)
    assert list(named) == [n for n, _ in module.named_parameters()]
    for (name, p), offset in zip(module.named_parameters(), np.cumsum([0] + [q.numel() for q in module.parameters()])):
        assert named[name].shape == p.shape
        assert torch.allclose(named[name].reshape(-1), g[offset:offset + p.numel()], rtol=1e-10, atol=0)


def test_inputs_that_require_grad_are_detached():
    module, shape, x, y = ref.make("mlp")
    fisher = natgrad.Fisher(natgrad.Model.from_torch(module, shape), x.clone().requires_grad_(), y)
    assert fisher.loss == pytest.approx(ref.loss_and_gradient(module, x, y)[0], rel=1e-12)


@pytest.fixture
def mlp():
    module, shape, x, y = ref.make("mlp")
    return module, natgrad.Model.from_torch(module, shape), x, y


def test_a_stale_fisher_raises(mlp):
    module, model, x, y = mlp
    fisher = natgrad.Fisher(model, x, y)
    fisher.matvec(torch.ones(fisher.num_params))
    with torch.no_grad():
        next(module.parameters()).add_(0.1)
    for call in (lambda: fisher.loss, fisher.gradient, lambda: fisher.matvec(torch.ones(fisher.num_params)),
                 lambda: fisher.solve(0.1), lambda: fisher.eigenvalues(2)):
        with pytest.raises(RuntimeError, match="changed since this natgrad.Fisher was made"):
            call()
    fresh = natgrad.Fisher(model, x, y)  # a new Fisher reads the new parameters
    assert fresh.loss == pytest.approx(ref.loss_and_gradient(module, x, y)[0], rel=1e-12)


def test_bad_input_shape(mlp):
    _, model, x, y = mlp
    with pytest.raises(ValueError, match=r"inputs have shape \[9, 5\] but the model takes \[N, 4\]"):
        natgrad.Fisher(model, torch.randn(9, 5), y)


def test_targets_of_the_wrong_length_or_kind(mlp):
    _, model, x, y = mlp
    with pytest.raises(ValueError, match="one entry per sample"):
        natgrad.Fisher(model, x, y[:5])
    with pytest.raises(ValueError, match="class indices"):
        natgrad.Fisher(model, x, y.double())
    with pytest.raises(ValueError, match="label"):
        natgrad.Fisher(model, x, torch.full_like(y, 7))


def test_bad_vector_and_options(mlp):
    _, model, x, y = mlp
    fisher = natgrad.Fisher(model, x, y)
    with pytest.raises(ValueError, match="flat vector of 82 entries"):
        fisher.matvec(np.ones(3))
    with pytest.raises(ValueError):
        fisher.eigenvalues(fisher.num_params)
    with pytest.raises(ValueError):
        fisher.solve(-1.0)
    with pytest.raises(ValueError, match="dtype"):
        natgrad.Fisher(model, x, y, dtype="float16")
    with pytest.raises(ValueError):
        natgrad.Fisher(model, x, y, kind="hessian")


def test_non_finite_inputs_are_named(mlp):
    _, model, x, y = mlp
    x = x.clone()
    x[3, 1] = float("nan")
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        natgrad.Fisher(model, x, y)


def test_tensors_off_the_cpu_are_refused(mlp):
    _, model, x, y = mlp
    # (no GPU here: the "meta" device stands in for any device other than the CPU)
    with pytest.raises(ValueError, match="on device meta: natgrad computes on the CPU"):
        natgrad.Fisher(model, torch.empty(9, 4, device="meta"), y)


def test_unsupported_module_is_a_sentence():
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 3, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0][:, -1]

    with pytest.raises(ValueError, match="docs/formats.md"):
        natgrad.Model.from_torch(Recurrent().double(), [2, 4])


def test_direction_as_a_state_dict():
    module, shape, x, y = ref.make("residual")
    fisher = natgrad.Fisher(natgrad.Model.from_torch(module, shape), x, y)
    flat, _ = fisher.solve(0.1)
    named, _ = fisher.solve(0.1, as_dict=True)
    assert list(named) == [n for n, _ in module.named_parameters()]
    assert torch.equal(torch.cat([t.reshape(-1) for t in named.values()]), flat)
