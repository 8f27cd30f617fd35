"""natgrad.Fisher on modules traced in memory (Model.from_torch), in float64, against PyTorch autograd:
loss, gradient, F v, the damped solve against a dense solve, and the top eigenvalues against a dense
eigendecomposition and SciPy's eigsh on as_linear_operator(); on an MLP, a residual graph, a CNN and a tiny GPT
(a prediction at every position, the output layer tied to the token embedding). Then float32 against float64,
and the same bits for any thread count."""
import numpy as np
import pytest
import torch
from scipy.sparse.linalg import eigsh

import natgrad
import reference as ref

NAMES = [name for name, _, _ in ref.MODELS]


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(params=NAMES)
def problem(request):
    module, shape, x, y = ref.make(request.param)
    fisher = natgrad.Fisher(natgrad.Model.from_torch(module, shape), x, y)
    return module, x, y, fisher


def test_loss_and_gradient(problem):
    module, x, y, fisher = problem
    loss, g = ref.loss_and_gradient(module, x, y)
    assert fisher.loss == pytest.approx(loss, rel=1e-12)
    assert rel(fisher.gradient(), g) < 1e-10


def test_matvec_is_the_gauss_newton_product(problem):
    module, x, y, fisher = problem
    torch.manual_seed(1)
    for _ in range(3):
        v = torch.randn(fisher.num_params)
        assert rel(fisher.matvec(v), ref.fisher_vector_product(module, x, v)) < 1e-10


def test_matvec_against_the_dense_fisher(problem):
    module, x, y, fisher = problem
    F = ref.dense_fisher(module, x, y).numpy()
    V = np.random.default_rng(2).standard_normal((fisher.num_params, 2))
    for v in V.T:
        assert rel(fisher.matvec(v), F @ v) < 1e-10


def test_empirical_kind(problem):
    module, x, y, _ = problem
    fisher = natgrad.Fisher(natgrad.Model.from_torch(module, list(x.shape[1:])), x, y, kind="empirical")
    F = ref.dense_fisher(module, x, y, kind="empirical").numpy()
    v = np.random.default_rng(3).standard_normal(fisher.num_params)
    assert rel(fisher.matvec(v), F @ v) < 1e-10


@pytest.mark.parametrize("damping", [1e-1, 1e-2])
def test_direction_against_a_dense_solve(problem, damping):
    module, x, y, fisher = problem
    F = ref.dense_fisher(module, x, y).numpy()
    _, g = ref.loss_and_gradient(module, x, y)
    expected = np.linalg.solve(F + damping * np.eye(F.shape[0]), g.numpy())
    d, report = fisher.solve(damping, tol=1e-13, max_iters=2000)
    assert report["cg"]["converged"], report["cg"]["message"]
    assert report["damping"] == damping and report["fisher"] == "exact" and report["dtype"] == "float64"
    assert rel(d, expected) < 1e-9


def test_several_dampings_in_one_solve(problem):
    module, x, y, fisher = problem
    F = ref.dense_fisher(module, x, y).numpy()
    g = fisher.gradient().numpy()
    dampings = [1e-1, 3e-1]
    directions, report = fisher.solve(dampings, tol=1e-13, max_iters=2000)
    assert [s["damping"] for s in report["solves"]] == dampings
    for lam, d in zip(dampings, directions):
        assert rel(d, np.linalg.solve(F + lam * np.eye(F.shape[0]), g)) < 1e-9


def test_eigenvalues_against_a_dense_eigendecomposition(problem):
    module, x, y, fisher = problem
    F = ref.dense_fisher(module, x, y).numpy()
    expected = np.linalg.eigvalsh(F)[::-1][:4]
    values = fisher.eigenvalues(4)
    assert list(values) == sorted(values, reverse=True)
    assert rel(values, expected) < 1e-9
    vals, vecs = fisher.eigenvectors(2)
    for lam, u in zip(vals.numpy(), vecs.numpy()):
        assert rel(F @ u, lam * u) < 1e-7


def test_scipy_eigsh_on_the_linear_operator(problem):
    _, _, _, fisher = problem
    op = fisher.as_linear_operator()
    assert op.shape == (fisher.num_params, fisher.num_params)
    scipy_values = np.sort(eigsh(op, k=3, which="LA", tol=1e-13, return_eigenvectors=False))[::-1]
    assert rel(fisher.eigenvalues(3), scipy_values) < 1e-8


def test_float32_follows_float64(problem):
    module, x, y, fisher = problem
    f32 = natgrad.Fisher(fisher.model, x, y, dtype="float32")
    v = torch.randn(fisher.num_params, dtype=torch.float32)
    y32 = f32.matvec(v)
    assert y32.dtype == torch.float32
    assert rel(y32, fisher.matvec(v.double())) < 1e-4
    assert f32.loss == pytest.approx(fisher.loss, rel=1e-5)


def test_threads_do_not_change_a_bit(problem):
    module, x, y, fisher = problem
    one, three = (natgrad.Fisher(fisher.model, x, y, threads=t) for t in (1, 3))
    v = torch.randn(fisher.num_params)
    assert torch.equal(one.gradient(), three.gradient())
    assert torch.equal(one.matvec(v), three.matvec(v))
    assert torch.equal(one.solve(0.1)[0], three.solve(0.1)[0])


def test_a_products_bits_do_not_depend_on_where_its_vectors_lie(problem):
    module, x, y, fisher = problem
    n = fisher.num_params
    v = np.random.default_rng(3).standard_normal(n)
    for offset in (1, 3):  # float64 views one and three entries past an allocation's start
        off = np.empty(n + offset)[offset:]
        off[:] = v
        assert np.array_equal(fisher.matvec(off), fisher.matvec(v))


def test_trace_and_density(problem):
    module, x, y, fisher = problem
    F = ref.dense_fisher(module, x, y).numpy()
    eigenvalues = np.linalg.eigvalsh(F)
    estimate, error = fisher.trace(probes=400, seed=1)
    assert abs(estimate - np.trace(F)) <= 4 * error and error < 0.2 * np.trace(F)
    # Lanczos run to its invariant space (F's rank is at most N·T·(C − 1) < P here): every node is an
    # eigenvalue of F, and the weights sum to 1.
    d = fisher.density(steps=fisher.num_params, probes=3, seed=2)
    assert d["weights"].sum() == pytest.approx(1.0, abs=1e-12)
    for node, weight in zip(d["nodes"], d["weights"]):
        if weight > 1e-9:
            assert np.min(np.abs(eigenvalues - node)) <= 1e-8 * eigenvalues[-1]
