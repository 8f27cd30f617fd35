"""natgrad.optim: natgrad's training optimizers on a torch module, as torch.optim's are used.

    opt = natgrad.optim.NaturalGradient(module, input_shape=[1, 28, 28], likelihood="categorical", lr=1.0)
    for x, y in loader:
        loss = opt.step(x, y)          # the loss before the update; the module's parameters updated in place

A step is a step of `natgrad train` with the same settings (the names are the library's
NaturalGradientStepOptions and KfacStepOptions fields; docs/training.md): the same arithmetic, the same
state (state_dict / load_state_dict), and for Monte-Carlo Fishers the same draws, keyed by (seed, step).

threads (a setting of both): natgrad's threads for a step; None or not given: natgrad.num_threads() at each step
(OMP_NUM_THREADS, else all cores, unless natgrad.set_num_threads changed it). A step runs with the GIL released
while the Python thread that called it waits, so PyTorch's threads are idle meanwhile and the two do not
oversubscribe the cores. last_step["threads"] is the count the last step used."""
import torch

from . import _arrays, _core
from .model import Model

_STATEFUL = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd,
             torch.nn.modules.instancenorm._InstanceNorm)


class _Optimizer:
    _kind = None

    def __init__(self, module, input_shape, likelihood="categorical", dtype="float64", **settings):
        if dtype not in _arrays.DTYPES:
            raise ValueError(f"dtype {dtype!r}: natgrad computes in \"float64\" or \"float32\"")
        self.module = module
        self.model = Model.from_torch(module, input_shape, likelihood)
        self.dtype = dtype
        self.settings = {k: v for k, v in settings.items() if not (k == "threads" and v is None)}
        core = _core.Optimizer64 if dtype == "float64" else _core.Optimizer32
        self._core = core(self.model._core, self._kind, self.settings)
        self._params = list(module.parameters())
        self._step = 0
        self.last_step = None  # what the last step did (its loss, damping, CG iterations, threads, ...)

    def step(self, inputs, targets):
        """One step on the batch: updates the module's parameters in place and returns the loss before the
        update (a float)."""
        if self.module.training and any(isinstance(m, _STATEFUL) for m in self.module.modules()):
            raise ValueError("the module is in training mode and has batch norm, dropout or instance norm: "
                             "natgrad computes the module in eval mode; call module.eval() before stepping")
        scalar = _arrays.DTYPES[self.dtype]
        x = _arrays.to_numpy(inputs, "inputs", scalar)
        y = _arrays.to_numpy(targets, "targets", None if self.model.likelihood == "categorical" else scalar)
        new, result = self._core.step(self.model.parameters(), x, y, self._step)
        with torch.no_grad():
            offset = 0
            for p in self._params:
                p.copy_(torch.from_numpy(new[offset:offset + p.numel()]).view_as(p))
                offset += p.numel()
        self._step += 1
        self.last_step = result
        return result["loss"]

    def state_dict(self):
        """The optimizer's state (what `natgrad train` checkpoints) and the step count, as tensors."""
        s = self._core.state()
        return {"step": self._step, "settings": dict(self.settings),
                "vectors": {k: torch.from_numpy(v) for k, v in s["vectors"].items()},
                "scalars": dict(s["scalars"])}

    def load_state_dict(self, state):
        """Restores a state_dict() of the same optimizer on the same module."""
        self._core.load_state({"vectors": {k: _arrays.to_numpy(v, k, "float64") for k, v in state["vectors"].items()},
                               "scalars": dict(state["scalars"])})
        self._step = int(state["step"])


class NaturalGradient(_Optimizer):
    """The natural-gradient (Hessian-free) optimizer: d = (F + λI)⁻¹ g by CG (or the exact Gram solve), with
    the damping rule, CG backtracking and the line search of `natgrad train --optimizer natgrad`. Settings:
    lr, damping, adapt_damping, curvature_batch, solver, gram_max_rows, cg_tolerance, cg_max_iterations,
    warm_start, backtrack, backtrack_spacing, line_search, armijo_c, line_search_shrink,
    line_search_max_shrinks, momentum, fisher, mc_samples, seed, threads."""
    _kind = "natgrad"


class KFAC(_Optimizer):
    """K-FAC (Martens & Grosse 2015) as `natgrad train --optimizer kfac`. Settings: lr, damping, adapt_damping,
    momentum, curvature_batch, factor_every, inverse_every, damping_every, factor_decay, min_damping, fisher,
    mc_samples, seed, threads. Its Fisher is "exact" unless fisher= says otherwise, as `natgrad train`'s."""
    _kind = "kfac"
