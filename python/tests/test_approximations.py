"""K-FAC and the diagonal through natgrad.Fisher, against references formed from their definitions
(curvature/kfac.h, docs/math.md) with PyTorch: on one linear layer (its weight and bias one block), K-FAC is
A ⊗ G with A the mean of [x; 1][x; 1]ᵀ and G the mean output Fisher, and its damped inverse the π-split
(A + π√λ I) ⊗ (G + √λ/π I) inverted; the diagonal is the mean of the per-sample gradients squared."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import natgrad
import reference as ref


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture
def linear():
    torch.manual_seed(5)
    module = nn.Sequential(nn.Linear(4, 3)).double()
    x, y = torch.randn(11, 4), torch.randint(0, 3, (11,))
    fisher = natgrad.Fisher(natgrad.Model.from_torch(module, [4]), x, y)
    xt = torch.cat([x, torch.ones(11, 1)], dim=1).numpy()
    A = xt.T @ xt / 11
    with torch.no_grad():
        p = torch.softmax(module(x), dim=1).numpy()
    G = np.mean([np.diag(q) - np.outer(q, q) for q in p], axis=0)
    return module, x, y, fisher, A, G


def as_matrix(v):  # the flat [weight (3 × 4), bias (3)] as V = [W | b]
    return np.hstack([v[:12].reshape(3, 4), v[12:, None]])


def as_flat(V):
    return np.concatenate([V[:, :4].ravel(), V[:, 4]])


def test_kfac_product_is_a_kronecker_product(linear):
    _, _, _, fisher, A, G = linear
    v = np.random.default_rng(0).standard_normal(15)
    assert rel(fisher.kfac_matvec(v), as_flat(G @ as_matrix(v) @ A)) < 1e-12


@pytest.mark.parametrize("damping", [1e-3, 1e-1])
def test_kfac_damped_inverse_is_the_pi_split(linear, damping):
    _, _, _, fisher, A, G = linear
    pi = np.sqrt((np.trace(A) / 5) / (np.trace(G) / 3))
    g = fisher.gradient().numpy()
    Ad = A + pi * np.sqrt(damping) * np.eye(5)
    Gd = G + np.sqrt(damping) / pi * np.eye(3)
    expected = as_flat(np.linalg.solve(Gd, as_matrix(g)) @ np.linalg.inv(Ad))
    assert rel(fisher.kfac_solve(damping), expected) < 1e-10


def test_kfac_is_exact_on_one_sample_of_one_layer():
    torch.manual_seed(6)
    module = nn.Sequential(nn.Linear(4, 3)).double()
    x, y = torch.randn(1, 4), torch.randint(0, 3, (1,))
    fisher = natgrad.Fisher(natgrad.Model.from_torch(module, [4]), x, y)
    F = ref.dense_fisher(module, x, y).numpy()
    v = np.random.default_rng(1).standard_normal(15)
    assert rel(fisher.kfac_matvec(v), F @ v) < 1e-12


@pytest.mark.parametrize("name", ["mlp", "residual"])
def test_diagonal_is_the_empirical_fisher_diagonal(name):
    module, shape, x, y = ref.make(name)
    fisher = natgrad.Fisher(natgrad.Model.from_torch(module, shape), x, y)
    F = ref.dense_fisher(module, x, y, kind="empirical").numpy()
    assert rel(fisher.diagonal(), np.diag(F)) < 1e-10
