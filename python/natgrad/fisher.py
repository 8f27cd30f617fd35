"""natgrad.Fisher: the Fisher of a model on one batch, matrix-free (natgrad's FisherOperator)."""
import numpy as np

from . import _arrays, _core
from .model import _versions


class Fisher:
    """F = (1/N) Σ_n J_nᵀ H_n J_n of `model` at its current parameters on the batch (inputs, targets).

    inputs: [N, *input_shape] (or [N, input size]); targets: class indices [N] (or [N, T]) for a categorical
    likelihood, real targets [N, C] otherwise. NumPy arrays or CPU torch tensors; results come back as the
    type the inputs were (matvec: the type of v), in `dtype`. kind: "exact", "mc" (mc_samples labels per
    input, drawn from `seed`) or "empirical". threads: natgrad's threads for this Fisher (None: natgrad.num_threads() at
    each call: OMP_NUM_THREADS, else all cores, unless natgrad.set_num_threads changed it; PyTorch's threads are
    idle while natgrad computes, so the two do not oversubscribe the cores).

    The forward pass runs here, once, with the parameters as they are now. For a model traced from a
    torch module, any later call raises if PyTorch has changed the module's parameters since (a stale
    Fisher is never used silently): make a new Fisher after a step."""

    def __init__(self, model, inputs, targets, kind="exact", mc_samples=1, seed=0, dtype="float64", threads=None):
        if dtype not in _arrays.DTYPES:
            raise ValueError(f"dtype {dtype!r}: natgrad computes in \"float64\" or \"float32\"")
        self.model = model
        self.dtype = dtype
        self._scalar = _arrays.DTYPES[dtype]
        self._kind = _arrays.kind_of(inputs)
        module = model.module
        self._watched = list(module.parameters()) if module is not None else []
        self._versions = _versions(self._watched)
        parameters = model.parameters()
        x = _arrays.to_numpy(inputs, "inputs", self._scalar)
        input_shape = list(model.input_shape)
        size = int(np.prod(input_shape))
        if x.ndim < 2 or (list(x.shape[1:]) != input_shape and list(x.shape[1:]) != [size]):
            raise ValueError(f"inputs have shape {list(x.shape)} but the model takes [N, " +
                             ", ".join(str(d) for d in input_shape) + "] (N samples of shape " +
                             f"{input_shape}) or [N, {size}]")
        if model.likelihood == "categorical":
            y = _arrays.to_numpy(targets, "targets")
            if y.dtype.kind not in "iu":
                raise ValueError(f"targets are {y.dtype} but a categorical likelihood takes class indices "
                                 "(integers) [N] or [N, T]")
            y = y.astype(np.int64, copy=False)
        else:
            y = _arrays.to_numpy(targets, "targets", self._scalar)
        core = _core.Fisher64 if dtype == "float64" else _core.Fisher32
        self._core = core(model._core, parameters, x, y, kind, int(mc_samples), int(seed),
                          0 if threads is None else int(threads))

    def _check(self):
        if self._watched and _versions(self._watched) != self._versions:
            raise RuntimeError("the module's parameters changed since this natgrad.Fisher was made (PyTorch "
                               "wrote to them, e.g. an optimizer step): make a new natgrad.Fisher with the "
                               "new parameters")

    @property
    def num_params(self):
        return self._core.num_params

    @property
    def loss(self):
        """The mean negative log-likelihood on the batch."""
        self._check()
        return self._core.loss

    def gradient(self, as_dict=False):
        """∇θ of the loss, flat in model.parameters() order (as_dict: {state_dict name: tensor})."""
        self._check()
        return self._out(self._core.gradient(), as_dict)

    def matvec(self, v):
        """F v (no damping), v flat in model.parameters() order; returned as the type v is."""
        self._check()
        kind = _arrays.kind_of(v)
        return _arrays.like(self._core.matvec(_arrays.to_numpy(v, "v", self._scalar)), kind)

    def solve(self, damping, tol=1e-6, max_iters=250, solver="cg", as_dict=False):
        """d = (F + λI)⁻¹ g by natgrad's solve (solver "cg", "smw" or "auto"): (direction, report), the report
        the dict natgrad solve --report writes. With a list of dampings (one multi-shift CG): (list of
        directions in that order, report). as_dict: each direction as {state_dict name: tensor}."""
        self._check()
        several = isinstance(damping, (list, tuple))
        dampings = [float(x) for x in damping] if several else [float(damping)]
        directions, report = self._core.solve(dampings, float(tol), int(max_iters), solver)
        directions = [self._out(d, as_dict) for d in directions]
        return (directions if several else directions[0]), report

    def eigenvalues(self, k):
        """The k largest eigenvalues of F, descending (Lanczos, relative tolerance 1e-10)."""
        self._check()
        values, _ = self._core.eigenvalues(int(k), False)
        return _arrays.like(values, self._kind)

    def eigenvectors(self, k):
        """(eigenvalues, eigenvectors) of the k largest: values descending, vectors [k, num_params], row i
        the unit eigenvector of value i."""
        self._check()
        values, vectors = self._core.eigenvalues(int(k), True)
        return _arrays.like(values, self._kind), _arrays.like(vectors, self._kind)

    def kfac_matvec(self, v):
        """F̂ v for K-FAC's approximation F̂ of this Fisher (one Kronecker product A ⊗ G per linear or
        convolutional layer, the diagonal elsewhere; built on first use). Returned as the type v is."""
        self._check()
        kind = _arrays.kind_of(v)
        return _arrays.like(self._core.kfac(_arrays.to_numpy(v, "v", self._scalar), False, 0.0), kind)

    def kfac_solve(self, damping, v=None):
        """F̂_λ⁻¹ v with K-FAC's factored Tikhonov damping (the π-split: (A + π√λ I) ⊗ (G + √λ/π I)); v
        defaults to the gradient, giving K-FAC's direction."""
        self._check()
        kind = self._kind if v is None else _arrays.kind_of(v)
        x = self._core.gradient() if v is None else _arrays.to_numpy(v, "v", self._scalar)
        return _arrays.like(self._core.kfac(x, True, float(damping)), kind)

    def diagonal(self):
        """The empirical Fisher's diagonal, 1/N Σ_n (∇θ ℓ_n)² (what the diagonal preconditioner uses)."""
        self._check()
        return _arrays.like(self._core.diagonal(), self._kind)

    def trace(self, probes=100, seed=0):
        """Hutchinson's estimate of tr F from `probes` Rademacher probes: (estimate, standard error)."""
        self._check()
        return self._core.trace(int(probes), int(seed))

    def density(self, steps=80, probes=10, seed=0, grid_points=1000, sigma=0.0):
        """F's spectral density by stochastic Lanczos quadrature (as natgrad spectrum --density): a dict with
        the quadrature's "nodes" and "weights" (every probe's Ritz values and τ²/probes, summing to 1), and
        the density smoothed on "grid" ("density"; sigma ≤ 0: 1% of the spectrum's range)."""
        self._check()
        return self._core.density(int(steps), int(probes), int(seed), int(grid_points), float(sigma))

    def as_linear_operator(self):
        """F as a scipy.sparse.linalg.LinearOperator (symmetric), for SciPy's solvers and eigensolvers."""
        from scipy.sparse.linalg import LinearOperator

        def product(v):
            self._check()
            return self._core.matvec(np.ascontiguousarray(np.ravel(v), dtype=self._scalar))

        n = self.num_params
        return LinearOperator((n, n), matvec=product, rmatvec=product, dtype=self._scalar)

    def _out(self, vector, as_dict=False):
        if as_dict:
            return {name: _arrays.like(np.ascontiguousarray(t), self._kind)
                    for name, t in self.model.unflatten(vector).items()}
        return _arrays.like(vector, self._kind)
