"""natgrad.optim on torch modules: a plain natural-gradient step (no damping rule, line search, backtracking or
momentum) is θ ← θ − η (F + λI)⁻¹ g against a dense PyTorch solve; K-FAC's steps lower the loss; the loss
returned is PyTorch's before the update; state_dict / load_state_dict resume a run bit for bit; refusals."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import natgrad
import reference as ref


def plain_natural_gradient(module, shape, **extra):
    return natgrad.optim.NaturalGradient(module, shape, lr=0.5, damping=0.1, adapt_damping=False, line_search=False,
                                         backtrack=False, momentum=0.0, solver="cg", cg_tolerance=1e-13,
                                         cg_max_iterations=2000, warm_start=0.0, **extra)


@pytest.mark.parametrize("name", ["mlp", "residual"])
def test_a_plain_step_is_the_damped_natural_gradient(name):
    module, shape, x, y = ref.make(name)
    F = ref.dense_fisher(module, x, y).numpy()
    loss, g = ref.loss_and_gradient(module, x, y)
    expected = ref.flat(module).numpy() - 0.5 * np.linalg.solve(F + 0.1 * np.eye(F.shape[0]), g.numpy())
    opt = plain_natural_gradient(module, shape)
    assert opt.step(x, y) == pytest.approx(loss, rel=1e-12)
    after = ref.flat(module).numpy()
    assert np.linalg.norm(after - expected) <= 1e-9 * np.linalg.norm(expected)
    assert opt.last_step["cg_iterations"] > 0 and not opt.last_step["rejected"]


@pytest.mark.parametrize("make_optimizer", [
    lambda m, s: natgrad.optim.NaturalGradient(m, s),
    lambda m, s: natgrad.optim.KFAC(m, s, inverse_every=2),
])
def test_steps_lower_the_loss_and_resume_from_a_state_dict(make_optimizer):
    module, shape, x, y = ref.make("mlp", samples=32)
    twin = copy.deepcopy(module)
    opt = make_optimizer(module, shape)
    first = opt.step(x, y)
    state = copy.deepcopy(opt.state_dict())
    with torch.no_grad():
        for p, q in zip(twin.parameters(), module.parameters()):
            p.copy_(q)
    resumed = make_optimizer(twin, shape)
    resumed.load_state_dict(state)
    losses = [opt.step(x, y) for _ in range(5)]
    assert [resumed.step(x, y) for _ in range(5)] == losses
    for p, q in zip(twin.parameters(), module.parameters()):
        assert torch.equal(p, q)
    assert all(b <= a for a, b in zip([first] + losses, losses)) and losses[-1] < first  # (a rejected step: equal)
    assert nn.functional.cross_entropy(module(x), y).item() < losses[-1]


def test_unknown_setting_and_training_mode_are_refused():
    module, shape, x, y = ref.make("mlp")
    with pytest.raises(ValueError, match="unknown setting lerning_rate"):
        natgrad.optim.NaturalGradient(module, shape, lerning_rate=1.0)
    with_dropout = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.5), nn.Linear(5, 3)).double().eval()
    opt = natgrad.optim.KFAC(with_dropout, [4])
    with_dropout.train()
    with pytest.raises(ValueError, match="module.eval()"):
        opt.step(x, y)
