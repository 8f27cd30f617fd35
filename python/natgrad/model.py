"""natgrad.Model: a model natgrad computes with, traced from a PyTorch module in memory or read from files."""
import json

import numpy as np

from . import _core


def _versions(tensors):
    """What changes when PyTorch writes a tensor: its version counter (every in-place operation, an
    optimizer's step among them) and its storage (an assignment to .data)."""
    return [(t._version, t.data_ptr()) for t in tensors]


class Model:
    """A model spec with its parameters. Make one with Model.load or Model.from_torch.

    A model from Model.load holds its own parameters. A model from Model.from_torch reads the module's
    parameters whenever a Fisher is made from it, so a Fisher made after a training step sees the new ones."""

    def __init__(self, core, module=None, notes=()):
        self._core = core
        self.module = module
        self.notes = list(notes)
        self._traced_buffers = _versions(module.buffers()) if module is not None else None

    @classmethod
    def load(cls, model_json, weights):
        """A model from natgrad's files: the spec (model.json) and its parameters and buffers (a safetensors
        file with the state_dict names, as tools/export_torch.py writes them)."""
        return cls(_core.Model.load(str(model_json), str(weights)))

    @classmethod
    def from_torch(cls, module, input_shape, likelihood="categorical"):
        """Traces a torch.nn.Module with torch.fx, in memory, by the exporter's translation
        (natgrad.export_torch, the same code as tools/export_torch.py). input_shape is one sample's shape
        without the batch dimension ([1, 28, 28]). Raises ValueError with a sentence for anything natgrad
        cannot compute."""
        import torch
        from . import export_torch

        spec, buffers, notes = export_torch.graph_spec(module, input_shape, likelihood)
        label = f"{type(module).__name__} (traced from PyTorch)"
        parameters = _flat_parameters(module)
        buffers = {name: np.ascontiguousarray(t.detach().to("cpu", torch.float64).numpy())
                   for name, t in buffers.items()}
        return cls(_core.Model.from_spec(json.dumps(spec), label, parameters, buffers), module, notes)

    @property
    def num_params(self):
        return self._core.num_params

    @property
    def input_shape(self):
        return self._core.input_shape

    @property
    def output_shape(self):
        return self._core.output_shape

    @property
    def likelihood(self):
        return self._core.likelihood

    @property
    def spec_json(self):
        """The model spec as natgrad's model.json holds it."""
        return self._core.spec_json

    @property
    def parameter_names(self):
        """The parameter tensors' state_dict names, in flat-vector order."""
        return [name for name, _, _, _ in self._core.parameter_names]

    def parameters(self):
        """The parameters now, flat in model.parameters() order (float64 NumPy): the module's for a traced
        model, the model's own otherwise."""
        if self.module is None:
            return self._core.parameters
        if _versions(self.module.buffers()) != self._traced_buffers:
            raise RuntimeError("the module's buffers (batch norm's running statistics) changed since "
                               "Model.from_torch traced it: trace it again")
        return _flat_parameters(self.module)

    def unflatten(self, vector):
        """A flat vector (a gradient, a direction) as {state_dict name: array} in the parameters' shapes."""
        return {name: vector[offset:offset + size].reshape(shape)
                for name, shape, offset, size in self._core.parameter_names}


def _flat_parameters(module):
    import torch

    ps = list(module.parameters())
    for p in ps:
        if p.device.type != "cpu":
            raise ValueError(f"the module's parameters are on device {p.device}: natgrad computes on the CPU; "
                             "move the module with module.cpu()")
    if not ps:
        return np.zeros(0)
    return np.ascontiguousarray(torch.cat([p.detach().reshape(-1).to(torch.float64) for p in ps]).numpy())
