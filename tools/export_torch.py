#!/usr/bin/env python3
"""Export a PyTorch module to natgrad's files, and read natgrad's outputs back. Pure Python, torch only.

    from export_torch import export_model, export_data, load_safetensors, to_vector
    export_model(model, input_shape=[1, 28, 28], likelihood="categorical", directory="out")
        -> out/model.json, out/weights.safetensors
    export_data("out/data.safetensors", inputs, targets)
    d = load_safetensors("direction.safetensors")          # {name: tensor}, the parameters' state_dict names
    with torch.no_grad():                                  # a step θ ← θ − η d (not weights to load)
        for name, p in model.named_parameters():
            p -= lr * d[name]
    v = to_vector(model, d)                                # or as one flat vector, parameters_to_vector order
    spec, buffers, notes = graph_spec(model, input_shape, likelihood)   # the same translation, in memory

Command line (writes a small example model and dataset):
    python3 tools/export_torch.py --example cnn --out DIR [--samples N]

export_model translates any module that torch.fx traces into the modules, functions and methods listed in the
table "PyTorch support" of docs/formats.md: an nn.Sequential, or a forward with residual connections, the
functional forms of activations and pooling (F.relu, F.max_pool2d, ...), shape operations resolved at trace
time (x.view(x.size(0), -1), torch.flatten(x, 1), squeeze, ...), nn.MultiheadAttention and
nn.TransformerEncoder(Layer) as self-attention with a causal mask or none. Every node written names its PyTorch
origin ("origin": the module's path, or the function and source line). Anything else is an error naming the
PyTorch construct, the source line that calls it, the supported equivalent where one exists and the table.
The model must be in eval mode if it has batch norm, dropout or instance norm with running statistics.
safetensors is written directly (8-byte little-endian header length, JSON header, raw little-endian data).
"""
import argparse
import json
import linecache
import operator
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

LIKELIHOODS = ("categorical", "gaussian", "bernoulli")

# Every refusal ends with this pointer.
_TABLE = "The PyTorch modules, functions and methods natgrad translates are in the table of docs/formats.md " \
         "(\"PyTorch support\")."

# ----------------------------------------------------------------------------------------------------------
# safetensors

_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8",
           torch.float16: "F16", torch.bfloat16: "BF16", torch.bool: "BOOL"}
_TORCH = {v: k for k, v in _DTYPES.items()}


def save_safetensors(path, tensors):
    """Writes {name: tensor} (contiguous, row-major) as safetensors, atomically."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        shape = list(t.shape)
        t = t.reshape(-1)  # a 0-d tensor (num_batches_tracked) cannot be viewed as bytes
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load_safetensors(path):
    """Reads a safetensors file into {name: tensor}."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = bytearray(data[8 + n + b:8 + n + e])
        t = torch.frombuffer(buf, dtype=_TORCH[info["dtype"]]) if buf else torch.empty(0, dtype=_TORCH[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


# ----------------------------------------------------------------------------------------------------------
# One module's node spec

def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _whole(v, what):
    """An integer given as an int or an integral float (nn.Upsample stores scale factors as floats)."""
    if float(v) != int(v) or int(v) < 1:
        raise ValueError(f"natgrad's {what} is a positive integer, not {v}")
    return int(v)


def module_spec(m):
    """The spec of one supported module (its keys, without name, id, inputs and origin). Raises ValueError with
    the reason for a module natgrad cannot compute."""
    if isinstance(m, nn.Linear):
        return {"type": "linear", "in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if any(d != 1 for d in m.dilation) or m.padding_mode != "zeros":
            raise ValueError(f"{m}: natgrad's convolutions have dilation 1 and zero padding")
        one = isinstance(m, nn.Conv1d)
        size = (lambda v: v[0]) if one else _pair
        padding = m.padding if isinstance(m.padding, str) else size(m.padding)
        spec = {"type": "conv1d" if one else "conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": size(m.kernel_size), "stride": size(m.stride),
                "padding": (0 if one else [0, 0]) if padding == "valid" else padding, "bias": m.bias is not None}
        if m.groups != 1:
            spec["groups"] = m.groups  # grouped and depthwise
        return spec
    simple = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.Identity: "identity",
              nn.Mish: "mish"}
    for cls, name in simple.items():
        if type(m) is cls:
            return {"type": name}
    if isinstance(m, nn.GELU):
        approximate = getattr(m, "approximate", "none")
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU(approximate={approximate!r}) is not supported")
        return {"type": "gelu", "approximate": approximate} if approximate == "tanh" else {"type": "gelu"}
    if isinstance(m, nn.Softplus):
        if m.beta != 1 or m.threshold != 20:
            raise ValueError("natgrad's softplus has beta=1, threshold=20")
        return {"type": "softplus"}
    if isinstance(m, nn.LeakyReLU):
        return {"type": "leaky_relu", "negative_slope": m.negative_slope}
    if isinstance(m, nn.ELU):
        return {"type": "elu", "alpha": m.alpha}
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise ValueError("natgrad's flatten flattens all but the batch dimension")
        return {"type": "flatten"}
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        if (isinstance(m, nn.AvgPool2d) and _pair(m.padding) != [0, 0]) or m.ceil_mode or \
                (isinstance(m, nn.MaxPool2d) and (_pair(m.dilation) != [1, 1] or m.return_indices)):
            raise ValueError(f"{m}: natgrad pools without dilation, ceil_mode or return_indices, and pads "
                             "max-pooling only")
        if isinstance(m, nn.AvgPool2d) and m.divisor_override is not None:
            raise ValueError(f"{m}: natgrad's avgpool2d has no divisor_override")
        spec = {"type": "maxpool2d" if isinstance(m, nn.MaxPool2d) else "avgpool2d",
                "kernel_size": _pair(m.kernel_size)}
        if m.stride is not None:
            spec["stride"] = _pair(m.stride)
        if isinstance(m, nn.MaxPool2d) and _pair(m.padding) != [0, 0]:
            spec["padding"] = _pair(m.padding)
        return spec
    if isinstance(m, nn.AdaptiveAvgPool2d):
        if _pair(m.output_size) != [1, 1]:
            raise ValueError(f"{m}: natgrad supports AdaptiveAvgPool2d(1) (global average pooling) only")
        return {"type": "global_avgpool", "keepdim": True}
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.training:
            raise ValueError(f"{m} is in training mode: its output depends on the whole batch, so a per-sample "
                             "Fisher does not exist; call model.eval() before exporting")
        if not m.track_running_stats:
            raise ValueError(f"{m} has track_running_stats=False: it always normalizes with batch statistics, so "
                             "a per-sample Fisher does not exist")
        return {"type": "batch_norm", "num_features": m.num_features, "eps": m.eps, "affine": m.affine}
    if isinstance(m, nn.LayerNorm):
        return {"type": "layer_norm", "normalized_shape": list(m.normalized_shape), "eps": m.eps,
                "elementwise_affine": m.elementwise_affine}
    if isinstance(m, nn.GroupNorm):
        return {"type": "group_norm", "num_groups": m.num_groups, "num_channels": m.num_channels, "eps": m.eps,
                "affine": m.affine}
    if isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d)):
        if not m.track_running_stats:  # each sample (and channel) with its own statistics: GroupNorm(C, C)
            return {"type": "group_norm", "num_groups": m.num_features, "num_channels": m.num_features, "eps": m.eps,
                    "affine": m.affine}
        if m.training:
            raise ValueError(f"{m} is in training mode with track_running_stats=True: it updates its running "
                             "statistics in forward; call model.eval() before exporting (it then normalizes with "
                             "them), or build it with track_running_stats=False")
        # eval with running statistics: per channel (x − running_mean) / √(running_var + ε), batch norm's
        # evaluation mode, with the same buffers
        return {"type": "batch_norm", "num_features": m.num_features, "eps": m.eps, "affine": m.affine}
    if isinstance(m, nn.Embedding):
        if m.max_norm is not None or m.scale_grad_by_freq:
            raise ValueError(f"{m}: natgrad's embedding has no max_norm or scale_grad_by_freq")
        spec = {"type": "embedding", "num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim}
        if m.padding_idx is not None:
            spec["padding_idx"] = m.padding_idx
        return spec
    if isinstance(m, nn.MultiheadAttention):
        if not m.batch_first:
            raise ValueError(f"{m}: natgrad reads [N, T, E] sequences; construct it with batch_first=True")
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            raise ValueError(f"{m}: natgrad supports self-attention without kdim/vdim, add_bias_kv or add_zero_attn")
        if m.training and m.dropout > 0:
            raise ValueError(f"{m} is in training mode with dropout: call model.eval() before exporting")
        return {"type": "multihead_attention", "embed_dim": m.embed_dim, "num_heads": m.num_heads,
                "bias": m.in_proj_bias is not None}
    if isinstance(m, nn.Dropout):
        if m.training and m.p > 0:
            raise ValueError(f"{m} is in training mode: it zeroes random entries; call model.eval() before exporting")
        return {"type": "dropout", "p": m.p}
    if isinstance(m, (nn.Upsample, nn.UpsamplingNearest2d)):
        if m.mode != "nearest" or m.size is not None:
            raise ValueError(f"{m}: natgrad upsamples by an integer scale_factor in mode \"nearest\"")
        f = m.scale_factor
        return {"type": "upsample", "mode": "nearest",
                "scale_factor": [_whole(v, "scale_factor") for v in f] if isinstance(f, (tuple, list)) else
                _whole(f, "scale_factor")}
    raise ValueError(f"module {type(m).__name__} is not supported by natgrad")


# ----------------------------------------------------------------------------------------------------------
# How PyTorch spells what a node calls, and where the user's code called it

def _alias_map():
    """{function object: its canonical operation}, for every spelling (F.relu, torch.relu, torch.relu_, ...)."""
    table = {
        "relu": [F.relu, torch.relu, torch.relu_], "tanh": [torch.tanh, F.tanh], "sigmoid": [torch.sigmoid, F.sigmoid],
        "silu": [F.silu], "mish": [F.mish], "gelu": [F.gelu], "softplus": [F.softplus],
        "leaky_relu": [F.leaky_relu, F.leaky_relu_], "elu": [F.elu, F.elu_], "dropout": [F.dropout],
        "max_pool2d": [F.max_pool2d], "avg_pool2d": [F.avg_pool2d], "adaptive_avg_pool2d": [F.adaptive_avg_pool2d],
        "interpolate": [F.interpolate], "view": [torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze],
        "permute": [torch.permute], "transpose": [torch.transpose, torch.swapaxes, torch.swapdims],
        "mean": [torch.mean], "sum": [torch.sum], "add": [operator.add, operator.iadd, torch.add],
        "sub": [operator.sub, operator.isub, torch.sub], "mul": [operator.mul, operator.imul, torch.mul],
        "div": [operator.truediv, operator.itruediv, torch.div, torch.true_divide], "neg": [operator.neg, torch.neg],
        "cat": [torch.cat, torch.concat], "log_softmax": [F.log_softmax, torch.log_softmax],
        "softmax": [F.softmax, torch.softmax], "getitem": [operator.getitem]}
    return {fn: op for op, fns in table.items() for fn in fns}


_FUNCTIONS = _alias_map()
_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid",
            "sigmoid_": "sigmoid", "view": "view", "reshape": "view", "flatten": "view", "squeeze": "view",
            "unsqueeze": "view", "view_as": "view", "reshape_as": "view", "contiguous": "view", "permute": "permute",
            "transpose": "transpose", "swapaxes": "transpose", "swapdims": "transpose", "mean": "mean", "sum": "sum",
            "add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul", "div": "div",
            "div_": "div", "neg": "neg", "log_softmax": "log_softmax", "softmax": "softmax"}
# Shape queries: their values are fixed at trace time (a dummy batch's; the batch size itself varies).
_SHAPE_METHODS = {"size", "dim", "ndimension", "numel", "nelement"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}
_OPERATORS = {operator.add: "+", operator.iadd: "+=", operator.sub: "-", operator.isub: "-=", operator.mul: "*",
              operator.imul: "*=", operator.truediv: "/", operator.itruediv: "/=", operator.neg: "unary -",
              operator.getitem: "indexing []", operator.matmul: "@", operator.pow: "**", operator.floordiv: "//"}
# The supported equivalent of a construct natgrad does not translate.
_EQUIVALENTS = {F.linear: "nn.Linear", F.conv2d: "nn.Conv2d", F.conv1d: "nn.Conv1d", F.layer_norm: "nn.LayerNorm",
                F.group_norm: "nn.GroupNorm", F.instance_norm: "nn.InstanceNorm2d", F.batch_norm: "nn.BatchNorm2d (in eval mode)",
                F.embedding: "nn.Embedding", torch.matmul: "nn.Linear", operator.matmul: "nn.Linear",
                F.multi_head_attention_forward: "nn.MultiheadAttention(batch_first=True)",
                F.relu6: "F.relu", F.hardtanh: "torch.tanh"}
_METHOD_EQUIVALENTS = {"float": "no cast (natgrad computes in the dtype of --dtype)",
                       "double": "no cast (natgrad computes in the dtype of --dtype)",
                       "to": "no cast (natgrad computes in the dtype of --dtype)", "matmul": "nn.Linear"}

_NAMES = {}


def _function_name(fn):
    """How PyTorch users spell a function: F.relu, torch.flatten, +."""
    if not _NAMES:
        for prefix, namespace in (("F.", F), ("torch.", torch)):
            for name in dir(namespace):
                obj = getattr(namespace, name, None)
                if not name.startswith("_") and callable(obj) and not isinstance(obj, type):
                    _NAMES.setdefault(id(obj), prefix + name)
    if fn in _OPERATORS:
        return "operator " + _OPERATORS[fn]
    return _NAMES.get(id(fn), getattr(fn, "__qualname__", getattr(fn, "__name__", str(fn))))


def _module_class(m):
    cls = type(m)
    return ("nn." if cls.__module__.startswith("torch.nn") else "") + cls.__name__


_HERE = os.path.realpath(__file__)
_TORCH_DIR = os.path.realpath(os.path.dirname(torch.__file__)) + os.sep
_REAL = {}


def _user_frame(skip):
    """(file, line) of the innermost caller that is neither PyTorch nor this exporter's tracer, or None when the
    traced code has no source of the user's (the model is an nn.Sequential)."""
    f = sys._getframe(1)
    while f is not None:
        name = _REAL.setdefault(f.f_code.co_filename, os.path.realpath(f.f_code.co_filename))
        if name == _HERE:
            if f.f_code.co_name not in skip:
                return None  # the exporter's own call to trace: no user code in between
        elif not name.startswith(_TORCH_DIR):
            return f.f_code.co_filename, f.f_lineno
        f = f.f_back
    return None


class _Tracer(torch.fx.Tracer):
    """symbolic_trace's tracer that also records, for every node, the path of the module whose forward made it
    and the user's source line that made it. Buffers read in forward become get_attr nodes (so a mask slice
    self.mask[:T, :T] is traced)."""

    _OWN = {"create_node", "call_module", "_traced_causal_mask"}

    def __init__(self):
        super().__init__()
        self.proxy_buffer_attributes = True
        self._stack = [""]

    def call_module(self, m, forward, args, kwargs):
        self._stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._stack.pop()

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        node.meta["module_path"] = self._stack[-1]
        node.meta["user_frame"] = _user_frame(self._OWN)
        return node


_CAUSAL_MASK = torch.nn.Transformer.generate_square_subsequent_mask


def _traced_causal_mask(sz, *args, **kwargs):
    """nn.Transformer.generate_square_subsequent_mask while tracing: a size read in forward (x.size(1)) makes a
    node (torch.full cannot take a traced size), which shape propagation evaluates."""
    if isinstance(sz, torch.fx.Proxy):
        return sz.tracer.create_proxy("call_function", _CAUSAL_MASK, (sz, *args), kwargs)
    return _CAUSAL_MASK(sz, *args, **kwargs)


def _trace(model):
    tracer = _Tracer()
    saved = torch.nn.Transformer.__dict__["generate_square_subsequent_mask"]
    torch.nn.Transformer.generate_square_subsequent_mask = staticmethod(_traced_causal_mask)
    try:
        graph = tracer.trace(model)
    except torch.fx.proxy.TraceError as e:
        raise ValueError(f"torch.fx cannot trace {type(model).__name__}.forward: {e} (natgrad exports a forward "
                         "without control flow that depends on the data). " + _TABLE) from None
    finally:
        torch.nn.Transformer.generate_square_subsequent_mask = saved
    return graph, torch.fx.GraphModule(tracer.root, graph)


# ----------------------------------------------------------------------------------------------------------
# Shape propagation on two dummy batches: what differs between them depends on the batch size

class _Propagation(torch.fx.Interpreter):
    """Shape propagation (torch.fx.passes.shape_prop.ShapeProp's, which prints a traceback when the forward
    fails) that keeps, per node, a tensor's shape, or the value itself for the nodes in `keep` (trace-time
    constants: sizes, masks) and for non-tensors."""

    def __init__(self, gm, keep):
        super().__init__(gm)
        self.keep, self.values = keep, {}

    def run_node(self, n):
        try:
            result = super().run_node(n)
        except Exception as e:
            e.natgrad_node = getattr(e, "natgrad_node", n)  # where the user's forward failed
            raise
        self.values[n] = result if n in self.keep or not isinstance(result, torch.Tensor) else _Shape(result.shape)
        return result


class _Shape(tuple):
    """A traced tensor's shape, batch first."""


_BATCHES = (2, 3)


def _propagate(gm, input_shape, dtype, keep):
    runs = []
    with torch.no_grad():  # shapes and trace-time values only
        for n in _BATCHES:
            prop = _Propagation(gm, keep)
            prop.run(torch.zeros(n, *input_shape, dtype=dtype))
            runs.append(prop.values)
    return runs


def _same(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
            a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _is_causal(mask, T):
    """A causal [T, T] mask: −inf / True above the diagonal, 0 / False on and below it."""
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (T, T):
        return False
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    if mask.dtype == torch.bool:
        return bool(torch.equal(mask, above))
    return bool(torch.equal(mask, torch.zeros(T, T, dtype=mask.dtype).masked_fill(above, float("-inf"))))


def _args(node, names):
    """The call's arguments by the names of the function's parameters (the tensor first, as in a method call)."""
    bound = dict(zip(names, node.args))
    bound.update(node.kwargs)
    return bound


def _dims(d, rank):
    return sorted({x % rank for x in (d if isinstance(d, (tuple, list)) else [d])})


# ----------------------------------------------------------------------------------------------------------
# The translation

class _Translation:
    """Walks the traced graph once, writing natgrad node specs. A value that a shape operation produces without
    moving data (view, reshape, flatten, squeeze, unsqueeze, contiguous, eval-mode dropout) is a view of the
    node that computed it; it becomes a node only when an operation reads it and its shape differs (flatten
    to one dimension, else reshape), so chains of views cost one node at most."""

    def __init__(self, model, input_shape, likelihood):
        self.likelihood = likelihood
        self.graph, gm = _trace(model)
        self.modules = dict(model.named_modules())
        self.params = dict(model.named_parameters())  # a tied tensor once, under its first name
        self.first_name = {id(t): name for name, t in self.params.items()}
        self.buffers = dict(model.named_buffers())
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError(f"natgrad models take one input; forward takes {len(placeholders)}")
        self.input = placeholders[0]
        self.const = self._trace_time_constants()
        self.computed = {self.input}  # what depends on the input: the rest is constants and parameters
        for n in self.graph.nodes:
            if any(a in self.computed for a in n.all_input_nodes) and n not in self.const:
                self.computed.add(n)
        token_input = any(n.op == "call_module" and isinstance(self.modules.get(n.target), nn.Embedding)
                          and n.args and n.args[0] is self.input for n in self.graph.nodes)
        dtype = torch.long if token_input else next((p.dtype for p in model.parameters()), torch.float32)
        self.runs = self._propagate(gm, list(input_shape), dtype)
        self.layers, self.out_buffers, self.notes = [], {}, []
        self.ids, self.views, self.called, self.taken = {self.input: "input"}, {}, set(), {"input"}

    # -- trace-time values
    def _trace_time_constants(self):
        """Nodes whose values do not depend on the input's data nor on the parameters: shape queries (x.size(0),
        x.shape[1]), arithmetic on them, buffers and constants read in forward and what is computed from those
        alone (a mask slice, nn.Transformer.generate_square_subsequent_mask(T))."""
        const = set()
        for n in self.graph.nodes:
            if n.op == "get_attr":
                if n.target not in self.params:
                    const.add(n)
            elif n.op == "call_method" and n.target in _SHAPE_METHODS or \
                    n.op == "call_function" and n.target is getattr and n.args[1] in _SHAPE_ATTRIBUTES:
                const.add(n)
            elif n.op in ("call_function", "call_method") and all(a in const for a in n.all_input_nodes):
                const.add(n)
        return const

    def _propagate(self, gm, input_shape, dtype):
        try:
            return _propagate(gm, input_shape, dtype, self.const)
        except Exception as e:  # the user's forward on a dummy batch: any error it raises
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            node = getattr(e, "natgrad_node", None)
            if node is not None and self.site(node):
                error = f"{self.what(node)} at {self.site(node)} `{self.source(node)}` raised {error}"
        if len(input_shape) > 1:
            try:
                _propagate(gm, input_shape[1:], dtype, self.const)
            except Exception:
                pass
            else:
                raise ValueError(f"input_shape {input_shape} includes the batch dimension: give one sample's shape, "
                                 f"{input_shape[1:]} (the forward fails on a dummy batch of shape "
                                 f"{[_BATCHES[0], *input_shape]}: {error})")
        raise ValueError(f"the model's forward fails on a dummy batch of shape {[_BATCHES[0], *input_shape]} "
                         f"(input_shape {input_shape} must be one sample's shape): {error}")

    def value(self, node, a):
        """The trace-time value of an argument: a constant node's value (the same for both dummy batches), a
        Python value as it is; a tensor the model computes is refused."""
        if isinstance(a, (tuple, list)):
            return type(a)(self.value(node, x) for x in a)
        if not isinstance(a, torch.fx.Node):
            return a
        if a not in self.const:
            self.refuse(node, f"its argument {a.name} is a tensor the model computes, where natgrad needs a value "
                              "fixed at trace time")
        if not _same(self.runs[0][a], self.runs[1][a]):
            self.refuse(node, f"its argument {a.name} depends on the batch size (it is {self.runs[0][a]} for a "
                              f"batch of {_BATCHES[0]}, {self.runs[1][a]} for {_BATCHES[1]})")
        return self.runs[0][a]

    def shape(self, node):
        """A computed tensor's per-sample shape."""
        return list(self.runs[0][node][1:])

    # -- where a node comes from
    def site(self, node):
        frame = node.meta.get("user_frame")
        return f"{os.path.basename(frame[0])}:{frame[1]}" if frame else None

    def what(self, node):
        if node.op == "call_module":
            return f"{node.target} ({self.target(node)})"
        return self.target(node)

    def target(self, node):
        if node.op == "call_module":
            return _module_class(self.modules[node.target])
        if node.op == "call_method":
            return f"Tensor.{node.target}"
        if node.op == "get_attr":
            return f"the attribute {node.target!r}"
        return _function_name(node.target)

    def origin(self, node, what=None):
        """The "origin" of a node written for `node`: the module's path and class, or the function; and the line."""
        site = self.site(node)
        return (what or self.what(node)) + (f" at {site}" if site else "")

    def source(self, node):
        frame = node.meta.get("user_frame")
        return linecache.getline(frame[0], frame[1]).strip() if frame else ""

    def refuse(self, node, reason, use=None):
        frame = node.meta.get("user_frame")
        source = self.source(node)
        path = node.meta.get("module_path", "")
        where = f"node {node.name}, " + (f"in module {path!r}" if path else "in the top-level forward")
        raise ValueError(f"{self.target(node)}" + (f" '{node.target}'" if node.op == "call_module" else "") +
                         (f" at {self.site(node)}" if frame else "") + (f" `{source}`" if source else "") +
                         f" ({where}): {reason}" + (f"; use {use}" if use else "") + ". " + _TABLE)

    # -- writing nodes
    def emit(self, node, spec, inputs, origin=None, node_id=None):
        """Appends a node reading the natgrad ids `inputs`; returns its id."""
        spec = dict(spec)
        spec["id"] = node_id or self.fresh(node.name)
        self.taken.add(spec["id"])
        spec["inputs"] = inputs
        spec["origin"] = origin or self.origin(node)
        self.layers.append(spec)
        return spec["id"]

    def fresh(self, base):
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}/{k}", k + 1
        return name

    def ref(self, node, user):
        """The natgrad id of a computed tensor, writing the reshape a view needs (its first reader pays for it)."""
        if node in self.ids:
            return self.ids[node]
        if node in self.views:
            source = self.views[node]
            have, want = self.shape(source), self.shape(node)
            sid = self.ref(source, user)
            if have == want:
                self.ids[node] = sid
            elif len(want) == 1:
                self.ids[node] = self.emit(node, {"type": "flatten"}, [sid])
            else:
                self.ids[node] = self.emit(node, {"type": "reshape", "shape": want}, [sid])
            return self.ids[node]
        if isinstance(node, torch.fx.Node) and node.op == "get_attr":
            self.refuse(user, f"it reads {node.target!r}, a parameter or buffer, where natgrad reads a computed tensor")
        self.refuse(user, f"its operand {getattr(node, 'name', node)!r} is not a tensor natgrad computes")

    def module_node(self, node, m, path, inputs, origin):
        """A node for module m at `path` (a node's own module or a submodule of a translated one)."""
        try:
            spec = dict(module_spec(m), name=path)
        except ValueError as e:
            self.refuse(node, str(e))
        own = list(m.named_parameters(recurse=False))
        if own and any(self.first_name[id(t)] != f"{path}.{local}" for local, t in own):
            # Tied weights (head.weight = tok.weight): the node names the tensors it shares.
            spec["parameter_names"] = [self.first_name[id(t)] for _, t in own]
        if list(m.parameters()):
            if path in self.called:
                self.refuse(node, f"module {path!r} is called twice; shared parameters are not supported")
            self.called.add(path)
        if spec["type"] == "batch_norm":
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                if f"{path}.{b}" in self.buffers:
                    self.out_buffers[f"{path}.{b}"] = self.buffers[f"{path}.{b}"]
        return self.emit(node, spec, inputs, origin, node_id=node.name if path == node.target else path)

    # -- the walk
    def run(self):
        output = next(n for n in self.graph.nodes if n.op == "output").args[0]
        if not isinstance(output, torch.fx.Node) or output in self.const:
            raise ValueError("the model must return one tensor computed from its input")
        output = self.trailing(output)
        for node in self.graph.nodes:  # a padding mask first: the mask's own computation (idx == 0) is no node
            m = self.modules.get(node.target) if node.op == "call_module" else None
            if isinstance(m, (nn.TransformerEncoder, nn.TransformerEncoderLayer, nn.MultiheadAttention)):
                names = ("query", "key", "value", "key_padding_mask") if isinstance(m, nn.MultiheadAttention) else \
                    ("src", "mask", "src_key_padding_mask")
                a = _args(node, names)
                if a.get(names[-1]) is not None:
                    self.refuse(node, f"{names[-1]} is not supported: natgrad's attention reads every position of "
                                      "every sample (give sequences of one length T)")
        for node in self.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr") or node in self.const or node is self.dropped or \
                    node in self.ids:
                continue  # a parameter's get_attr is taken up by the operation that reads it
            if node not in self.computed:
                self.refuse(node, "it computes with a parameter read in forward, which natgrad supports only as a "
                                  "whole operand of + (x + self.pos)", "a parameter of the shape the addition needs")
            self.check_batch(node)
            if node.op == "call_module":
                self.call_module(node)
            elif node.op == "call_function" and node.target in _FUNCTIONS:
                self.call(node, _FUNCTIONS[node.target])
            elif node.op == "call_method" and node.target in _METHODS:
                self.call(node, _METHODS[node.target])
            elif node.op == "call_method":
                self.refuse(node, "the method is not supported by natgrad", _METHOD_EQUIVALENTS.get(node.target))
            else:
                self.refuse(node, "it is not supported by natgrad", _EQUIVALENTS.get(node.target))
        if output is self.input:
            raise ValueError("the model's output must be computed by a supported operation")
        out_id = self.ref(output, output)
        module_names = {l["name"] for l in self.layers if "name" in l}
        module_names |= {l["name"] + ".out_proj" for l in self.layers if l["type"] == "multihead_attention"}
        operands = {l["parameter"] for l in self.layers if "parameter" in l}
        unused = [n for n in self.params if n.rsplit(".", 1)[0] not in module_names and n not in operands]
        if unused:
            raise ValueError(f"parameters {unused} are not used by the traced forward; natgrad's flat vector would "
                             "not match model.parameters()")
        return {"format_version": 2, "input_shape": self.shape(self.input), "likelihood": self.likelihood,
                "output": out_id, "parameters": list(self.params), "layers": self.layers}

    def check_batch(self, node):
        """Every computed tensor keeps the batch as its first dimension and does not depend on its size."""
        a, b = self.runs[0].get(node), self.runs[1].get(node)
        if not isinstance(a, _Shape):
            return  # attention's (output, weights) pair, taken apart by [0]
        if len(a) == 0:
            self.refuse(node, "it reduces the batch dimension away (natgrad keeps one sample per row)",
                        "x.mean(dims) or x.sum(dims) over the sample's dimensions")
        if a[0] != _BATCHES[0] or b[0] != _BATCHES[1] or a[1:] != b[1:]:
            use = "x.flatten(1) or x.view(x.size(0), -1)" if self.op_of(node) == "view" else None
            self.refuse(node, f"it mixes the batch dimension into the others (its output is {list(a)} for a batch "
                              f"of {_BATCHES[0]}, {list(b)} for a batch of {_BATCHES[1]}); natgrad keeps one sample "
                              "per row", use)

    def op_of(self, node):
        if node.op == "call_function":
            return _FUNCTIONS.get(node.target)
        if node.op == "call_method":
            return _METHODS.get(node.target)
        if node.op == "call_module":
            m = self.modules[node.target]
            return {nn.LogSoftmax: "log_softmax", nn.Softmax: "softmax", nn.Sigmoid: "sigmoid", nn.Flatten: "view",
                    nn.Unflatten: "view"}.get(type(m))
        return None

    def trailing(self, output):
        """A final log_softmax (categorical) or sigmoid (bernoulli) is the likelihood's own link: left out, with a
        note. A final softmax is refused."""
        self.dropped = None
        op = self.op_of(output)
        if op not in ("log_softmax", "softmax", "sigmoid") or len(output.users) != 1:
            return output
        if op == "sigmoid" and self.likelihood != "bernoulli":
            return output  # a sigmoid output layer of a gaussian model is part of the model
        if op == "softmax":
            self.refuse(output, "the model ends in softmax: the loss on its probabilities is not natgrad's "
                                "likelihood, whose categorical log-likelihood applies log_softmax to the logits itself",
                        "the logits (drop the softmax) if the model was trained with nn.CrossEntropyLoss, or "
                        "F.log_softmax if it was trained with nn.NLLLoss")
        x = output.args[0]
        if op == "log_softmax":
            dim = self.modules[output.target].dim if output.op == "call_module" else \
                self.value(output, _args(output, ("input", "dim")).get("dim"))
            rank = len(self.runs[0][x])
            if dim is None or dim % rank != rank - 1:
                self.refuse(output, f"natgrad's likelihood reads the classes on the last dimension, and this "
                                    f"log_softmax runs over dimension {dim}")
        name = self.what(output) + (f" at {self.site(output)}" if self.site(output) else "")
        if op == "log_softmax":
            if self.likelihood != "categorical":
                self.refuse(output, f"a final log_softmax goes with likelihood \"categorical\" (a model trained with "
                                    f"nn.NLLLoss), not {self.likelihood!r}")
            self.notes.append(f"the final {name} is left out: the categorical likelihood applies log_softmax to "
                              "the logits (NLLLoss of log_softmax(z) is the cross-entropy of z)")
        else:
            self.notes.append(f"the final {name} is left out: the bernoulli likelihood applies the sigmoid to the "
                              "logits (BCELoss of sigmoid(z) is BCEWithLogitsLoss of z)")
        self.dropped = output
        return x

    # -- modules
    def call_module(self, node):
        m = self.modules[node.target]
        if isinstance(m, (nn.TransformerEncoder, nn.TransformerEncoderLayer)):
            return self.encoder(node, m)
        if isinstance(m, nn.MultiheadAttention):
            return self.attention(node, m)
        if len(node.args) != 1 or node.kwargs:
            self.refuse(node, "natgrad calls a module with one tensor argument")
        x = node.args[0]
        if isinstance(m, (nn.Flatten, nn.Unflatten, nn.Identity)) or \
                isinstance(m, nn.Dropout) and (not m.training or m.p == 0):
            return self.view(node, x)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            self.refuse(node, f"{_module_class(m)} is supported only as the model's last operation (with the "
                              "categorical likelihood)")
        if isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d)):
            self.instance_norm_input(node, m, x)
        self.ids[node] = self.module_node(node, m, node.target, [self.ref(x, node)], self.origin(node))

    def instance_norm_input(self, node, m, x):
        """InstanceNorm1d/2d read a batch [N, C, L] / [N, C, H, W] with C = num_features (PyTorch takes a tensor
        of one dimension less as a single unbatched sample, which natgrad's batch is not)."""
        dims = "C, L" if isinstance(m, nn.InstanceNorm1d) else "C, H, W"
        have = self.shape(x) if isinstance(x, torch.fx.Node) and x in self.runs[0] else None
        if have is None or len(have) != dims.count(",") + 1:
            self.refuse(node, f"{_module_class(m)} is translated for a batch [N, {dims}], but a sample here has "
                              f"shape {have} (PyTorch reads a tensor of one dimension less as a single unbatched "
                              "sample)")
        if have[0] != m.num_features:
            self.refuse(node, f"{_module_class(m)} has num_features {m.num_features} but its input has {have[0]} "
                              "channels")

    def attention(self, node, m):
        if any(u.op != "call_function" or u.target is not operator.getitem for u in node.users):
            self.refuse(node, "natgrad computes attention's output", "attn(...)[0]")
        try:
            spec = dict(module_spec(m), name=node.target)
        except ValueError as e:
            self.refuse(node, str(e))
        a = _args(node, ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
                         "average_attn_weights", "is_causal"))
        q = a.get("query")
        if not (q is a.get("key") is a.get("value")) or not isinstance(q, torch.fx.Node):
            self.refuse(node, "natgrad supports self-attention, attn(h, h, h, ...)")
        self.masked(node, spec, a.get("attn_mask"), a.get("is_causal", False), self.shape(q)[0], node.target)
        if node.target in self.called:
            self.refuse(node, f"module {node.target!r} is called twice; shared parameters are not supported")
        self.called.add(node.target)
        self.ids[node] = self.emit(node, spec, [self.ref(q, node)], node_id=node.name)
        for u in node.users:
            if u.args[1] != 0:
                self.refuse(u, "natgrad computes attention's output [0], not its weights")
            self.ids[u] = self.ids[node]

    def masked(self, node, spec, mask, is_causal, T, owner):
        """Sets the attention spec's mask: a buffer that is causal for the sequence's T, or a causal one written
        as `{owner}.causal_mask` when the mask is computed in forward or is_causal=True gives none."""
        if isinstance(is_causal, torch.fx.Node):
            is_causal = self.value(node, is_causal)
        if mask is None:
            if not is_causal:
                return
            value = torch.zeros(T, T).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        else:
            value = self.value(node, mask)
            if not _is_causal(value, T):
                self.refuse(node, f"the mask {getattr(mask, 'target', mask)!r} is not a causal mask for the sequence "
                                  f"length {T} (natgrad's attention has no mask or a causal [T, T] one: 0 / False on "
                                  "and below the diagonal, -inf / True above it)")
        if isinstance(mask, torch.fx.Node) and mask.op == "get_attr" and mask.target in self.buffers:
            name = mask.target
        else:
            name = f"{owner}.causal_mask"
            while name in self.buffers or name in self.params:
                name = "_" + name
        spec["attn_mask"] = name
        spec["attn_mask_dtype"] = "bool" if value.dtype == torch.bool else "float"
        self.out_buffers[name] = value

    def encoder(self, node, m):
        """nn.TransformerEncoder(Layer) (batch_first) as the nodes that exist: per layer, self-attention, two
        residual adds, two layer norms and the feed-forward linear-activation-linear; dropout in eval is nothing."""
        whole = isinstance(m, nn.TransformerEncoder)
        a = _args(node, ("src", "mask" if whole else "src_mask", "src_key_padding_mask", "is_causal"))
        x = a.get("src")
        if not isinstance(x, torch.fx.Node) or len(self.shape(x)) != 2:
            self.refuse(node, "natgrad's attention reads a [N, T, E] sequence")
        layers = list(m.layers) if whole else [m]
        paths = [f"{node.target}.layers.{i}" for i in range(len(layers))] if whole else [node.target]
        if node.target in self.called:
            self.refuse(node, f"module {node.target!r} is called twice; shared parameters are not supported")
        self.called.add(node.target)
        cur = self.ref(x, node)
        site = self.site(node)
        for layer, path in zip(layers, paths):
            if not isinstance(layer, nn.TransformerEncoderLayer):
                self.refuse(node, f"its layers are {_module_class(layer)}, not nn.TransformerEncoderLayer")
            cur = self.encoder_layer(node, layer, path, cur, a.get("mask" if whole else "src_mask"),
                                     a.get("is_causal", False), self.shape(x)[0], site)
        if whole and m.norm is not None:
            cur = self.module_node(node, m.norm, f"{node.target}.norm", [cur],
                                   f"{node.target}.norm ({_module_class(m.norm)})" + (f" at {site}" if site else ""))
        self.ids[node] = cur

    def encoder_layer(self, node, layer, path, x, mask, is_causal, T, site):
        at = f" at {site}" if site else ""
        if not layer.self_attn.batch_first:
            self.refuse(node, f"{path} reads [T, N, E] sequences", "nn.TransformerEncoderLayer(..., batch_first=True)")
        if layer.training and any(d.p > 0 for d in (layer.dropout, layer.dropout1, layer.dropout2)):
            self.refuse(node, f"{path} is in training mode with dropout: call model.eval() before exporting")
        act = layer.activation
        if isinstance(act, nn.Module):
            act_spec = self.spec_of(node, act)
        elif _FUNCTIONS.get(act) in ("relu", "gelu", "tanh", "sigmoid", "silu", "mish"):
            act_spec = {"type": _FUNCTIONS[act]}
        else:
            self.refuse(node, f"{path}'s activation {getattr(act, '__name__', act)!r} is not supported",
                        "\"relu\" or \"gelu\"")

        def sub(name, inputs):
            m = getattr(layer, name)
            return self.module_node(node, m, f"{path}.{name}", inputs, f"{path}.{name} ({_module_class(m)}){at}")

        def attention(inputs):
            spec = dict(self.spec_of(node, layer.self_attn), name=f"{path}.self_attn")
            self.masked(node, spec, mask, is_causal, T, node.target)
            return self.emit(node, spec, inputs, f"{path}.self_attn (nn.MultiheadAttention){at}",
                             node_id=f"{path}.self_attn")

        def feed_forward(h):
            h = sub("linear1", [h])
            h = self.emit(node, act_spec, [h], f"{path}.activation ({act_spec['type']}){at}",
                          node_id=f"{path}.activation")
            return sub("linear2", [h])

        def residual(a, b, k):
            return self.emit(node, {"type": "add"}, [a, b], f"{path} (nn.TransformerEncoderLayer residual {k}){at}",
                             node_id=f"{path}/residual{k}")

        if layer.norm_first:  # x + sa(norm1(x)), then x + ff(norm2(x))
            x = residual(x, attention([sub("norm1", [x])]), 1)
            return residual(x, feed_forward(sub("norm2", [x])), 2)
        x = sub("norm1", [residual(x, attention([x]), 1)])  # norm1(x + sa(x)), then norm2(x + ff(x))
        return sub("norm2", [residual(x, feed_forward(x), 2)])

    def spec_of(self, node, m):
        try:
            return module_spec(m)
        except ValueError as e:
            self.refuse(node, str(e))

    # -- functions and methods
    def call(self, node, op):
        x = node.args[0] if node.args else None
        if op in ("relu", "tanh", "sigmoid", "silu", "mish"):
            return self.unary(node, {"type": op})
        if op == "gelu":
            a = _args(node, ("input", "approximate"))
            approximate = self.value(node, a.get("approximate", "none"))
            return self.unary(node, self.as_module(node, nn.GELU, approximate=approximate))
        if op == "softplus":
            a = self.named(node, ("input", "beta", "threshold"), beta=1, threshold=20)
            return self.unary(node, self.as_module(node, nn.Softplus, a["beta"], a["threshold"]))
        if op == "leaky_relu":
            a = self.named(node, ("input", "negative_slope"), negative_slope=0.01)
            return self.unary(node, self.as_module(node, nn.LeakyReLU, a["negative_slope"]))
        if op == "elu":
            a = self.named(node, ("input", "alpha"), alpha=1.0)
            return self.unary(node, self.as_module(node, nn.ELU, a["alpha"]))
        if op == "dropout":
            a = self.named(node, ("input", "p", "training"), p=0.5, training=True)
            if a["training"] and a["p"] > 0:
                self.refuse(node, "F.dropout with training=True zeroes random entries",
                            "F.dropout(x, p, training=self.training) and call model.eval() before exporting")
            return self.view(node, x)
        if op == "max_pool2d":
            a = self.named(node, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                  "return_indices"), stride=None, padding=0, dilation=1, ceil_mode=False,
                           return_indices=False)
            return self.unary(node, self.as_module(node, nn.MaxPool2d, a["kernel_size"], a["stride"], a["padding"],
                                                   a["dilation"], a["return_indices"], a["ceil_mode"]))
        if op == "avg_pool2d":
            a = self.named(node, ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                  "divisor_override"), stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                           divisor_override=None)
            return self.unary(node, self.as_module(node, nn.AvgPool2d, a["kernel_size"], a["stride"], a["padding"],
                                                   a["ceil_mode"], a["count_include_pad"], a["divisor_override"]))
        if op == "adaptive_avg_pool2d":
            a = self.named(node, ("input", "output_size"))
            return self.unary(node, self.as_module(node, nn.AdaptiveAvgPool2d, a["output_size"]))
        if op == "interpolate":
            return self.interpolate(node)
        if op == "view":
            return self.view(node, x)
        if op in ("permute", "transpose"):
            return self.permute(node, op)
        if op in ("mean", "sum"):
            return self.reduce(node, op)
        if op in ("add", "sub", "mul", "div", "neg"):
            return self.arithmetic(node, op)
        if op == "cat":
            return self.cat(node)
        if op == "getitem":
            self.refuse(node, "indexing or slicing a tensor is not supported")
        if op == "softmax":
            self.refuse(node, "softmax inside the model is not supported", "nn.MultiheadAttention for attention")
        self.refuse(node, "log_softmax is supported only as the model's last operation, with the categorical "
                          "likelihood")

    def named(self, node, names, **defaults):
        a = dict(defaults)
        a.update(_args(node, names))
        return {k: self.value(node, v) if k != "input" else v for k, v in a.items()}

    def as_module(self, node, cls, *args, **kwargs):
        """The spec of the module a functional form equals (F.max_pool2d(x, 2) is nn.MaxPool2d(2))."""
        try:
            return module_spec(cls(*args, **kwargs))
        except (ValueError, TypeError) as e:
            self.refuse(node, str(e))

    def unary(self, node, spec):
        self.ids[node] = self.emit(node, spec, [self.ref(node.args[0], node)])

    def view(self, node, x):
        """A shape operation: the batch stays first (checked) and the elements keep their row-major order, so
        each sample's values are the same, only its shape may differ."""
        if not isinstance(x, torch.fx.Node) or x not in self.runs[0] or not isinstance(self.runs[0][x], _Shape):
            self.refuse(node, "natgrad reshapes a tensor the model computes")
        self.views[node] = self.views.get(x, x)

    def permute(self, node, op):
        x = node.args[0]
        rank = len(self.runs[0][x])
        if op == "transpose":
            a = self.named(node, ("input", "dim0", "dim1"))
            perm = list(range(rank))
            i, j = a["dim0"] % rank, a["dim1"] % rank
            perm[i], perm[j] = perm[j], perm[i]
        else:
            dims = [self.value(node, d) for d in node.args[1:]] or [self.value(node, node.kwargs.get("dims"))]
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = list(dims[0])
            perm = [d % rank for d in dims]
        if perm[0] != 0:
            self.refuse(node, "it moves the batch dimension (natgrad keeps one sample per row)",
                        "batch_first=True modules, whose sequences are [N, T, E]")
        shape = self.runs[0][x]
        if [p for p in perm if shape[p] != 1] == sorted(p for p in perm if shape[p] != 1):
            return self.view(node, x)  # only dimensions of size 1 move: the layout is the same
        self.ids[node] = self.emit(node, {"type": "permute", "dims": perm}, [self.ref(x, node)])

    def reduce(self, node, op):
        a = self.named(node, ("input", "dim", "keepdim"), dim=None, keepdim=False)
        x = a["input"]
        rank = len(self.runs[0][x])
        if a["dim"] is None or a["dim"] == [] or a["dim"] == ():
            self.refuse(node, f"it {op}s over every dimension, the batch too",
                        f"x.{op}(dims) over the sample's dimensions")
        dims = _dims(a["dim"], rank)
        if 0 in dims:
            self.refuse(node, f"it {op}s over the batch dimension")
        if op == "mean" and rank == 4 and dims == [2, 3]:
            return self.unary(node, {"type": "global_avgpool", "keepdim": bool(a["keepdim"])})
        self.unary(node, {"type": op, "dim": dims, "keepdim": bool(a["keepdim"])})

    def interpolate(self, node):
        a = self.named(node, ("input", "size", "scale_factor", "mode", "align_corners"), size=None, scale_factor=None,
                       mode="nearest")
        if a["mode"] != "nearest":
            self.refuse(node, f"natgrad upsamples in mode \"nearest\", not {a['mode']!r}")
        have = self.shape(a["input"])[1:]
        if a["size"] is not None:
            want = a["size"] if isinstance(a["size"], (tuple, list)) else [a["size"]] * len(have)
            if any(w % h for w, h in zip(want, have)):
                self.refuse(node, f"size {a['size']} is not an integer multiple of the input's {have}")
            factor = [w // h for w, h in zip(want, have)]
        else:
            f = a["scale_factor"]
            factor = list(f) if isinstance(f, (tuple, list)) else [f] * len(have)
        try:
            factor = [_whole(f, "scale_factor") for f in factor]
        except ValueError as e:
            self.refuse(node, str(e))
        self.unary(node, {"type": "upsample", "mode": "nearest",
                          "scale_factor": factor[0] if len(set(factor)) == 1 else factor})

    def arithmetic(self, node, op):
        """+, -, *, / of two computed tensors, of a tensor and a number, and a tensor plus an nn.Parameter."""
        a = _args(node, ("input", "other", "alpha"))
        if op == "neg":
            return self.unary(node, {"type": "scalar_affine", "scale": -1.0, "shift": 0.0})
        if a.get("alpha", 1) != 1 or set(node.kwargs) - {"alpha", "other"}:
            self.refuse(node, "natgrad's arithmetic has no alpha or rounding_mode")
        x, y = a["input"], a["other"]

        def kind(v):
            if isinstance(v, torch.fx.Node) and v.op == "get_attr" and v.target in self.params:
                return "parameter"
            if isinstance(v, torch.fx.Node) and v not in self.const:
                return "tensor"
            number = self.value(node, v)
            if isinstance(number, torch.Tensor) and number.dim() == 0:
                number = number.item()
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                self.refuse(node, f"its operand {getattr(v, 'target', v)!r} is a constant tensor; natgrad's arithmetic "
                                  "takes computed tensors, numbers and (for +) an nn.Parameter")
            return float(number)

        kx, ky = kind(x), kind(y)
        if kx == "tensor" and ky == "tensor":
            if op in ("add", "sub") and self.shape(x) != self.shape(y):
                self.refuse(node, f"natgrad adds and subtracts tensors of one shape, not {self.shape(x)} and "
                                  f"{self.shape(y)}")
            if op == "add":
                self.ids[node] = self.emit(node, {"type": "add"}, [self.ref(x, node), self.ref(y, node)])
            elif op == "sub":
                neg = self.emit(node, {"type": "scalar_affine", "scale": -1.0, "shift": 0.0}, [self.ref(y, node)])
                self.ids[node] = self.emit(node, {"type": "add"}, [self.ref(x, node), neg])
            elif op == "mul":
                self.ids[node] = self.emit(node, {"type": "mul"}, [self.ref(x, node), self.ref(y, node)])
            else:
                self.refuse(node, "natgrad divides a tensor by a number, not by a tensor")
            return
        if op == "add" and "parameter" in (kx, ky) and "tensor" in (kx, ky):
            p, t = (x, y) if kx == "parameter" else (y, x)
            spec = {"type": "add", "parameter": p.target, "parameter_shape": list(self.params[p.target].shape)}
            self.ids[node] = self.emit(node, spec, [self.ref(t, node)])
            return
        if "parameter" in (kx, ky):
            self.refuse(node, f"natgrad adds an nn.Parameter read in forward to a tensor; other arithmetic on a "
                              "parameter is not supported", "a module (nn.Linear, nn.LayerNorm)")
        if kx != "tensor" and ky != "tensor":
            self.refuse(node, "its operands are both fixed at trace time")
        t, c, tensor_first = (x, ky, True) if kx == "tensor" else (y, kx, False)
        if op == "add":
            scale, shift = 1.0, c
        elif op == "sub":
            scale, shift = (1.0, -c) if tensor_first else (-1.0, c)
        elif op == "mul":
            scale, shift = c, 0.0
        elif tensor_first:
            scale, shift = 1.0 / c, 0.0
        else:
            self.refuse(node, "natgrad divides a tensor by a number, not a number by a tensor")
        self.ids[node] = self.emit(node, {"type": "scalar_affine", "scale": scale, "shift": shift}, [self.ref(t, node)])

    def cat(self, node):
        a = _args(node, ("tensors", "dim"))
        tensors, dim = a["tensors"], self.value(node, a.get("dim", 0))
        rank = len(self.runs[0][node])
        if dim % rank != 1:
            self.refuse(node, f"natgrad concatenates along dimension 1 (channels or features), not {dim}")
        self.ids[node] = self.emit(node, {"type": "cat", "dim": 1}, [self.ref(t, node) for t in tensors])


def graph_spec(model, input_shape, likelihood):
    """Translates a module into natgrad's model spec, in memory. Returns (spec, buffers, notes): the spec as a
    dict (model.json's content), the buffers the operations need {state_dict name: tensor} (batch norm's
    statistics, attention masks; a causal mask computed in forward under "<module>.causal_mask"), and notes on
    what was left out (a final log_softmax or sigmoid the likelihood applies). Raises ValueError with a sentence
    for anything natgrad cannot compute."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}: natgrad's likelihoods are " +
                         ", ".join(f'"{x}"' for x in LIKELIHOODS) + " (docs/math.md)")
    if not isinstance(input_shape, (tuple, list)) or not input_shape or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape):
        raise ValueError(f"input_shape {input_shape!r} must be one sample's shape: positive integers without the batch "
                         "dimension ([1, 28, 28] for [N, 1, 28, 28] images, [T] for T tokens)")
    t = _Translation(model, input_shape, likelihood)
    spec = t.run()
    return spec, t.out_buffers, t.notes


def export_model(model, input_shape, likelihood, directory):
    """Writes model.json and weights.safetensors for any module torch.fx traces into supported operations
    (an nn.Sequential is one). Parameters keep their state_dict names and model.parameters() order; the
    buffers the operations need (batch norm's running_mean, running_var and num_batches_tracked, an
    attention mask) are written beside them. Prints a note for an operation left out (a final log_softmax or
    sigmoid that the likelihood applies)."""
    spec, buffers, notes = graph_spec(model, input_shape, likelihood)
    for note in notes:
        print(f"export_torch: note: {note}")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "model.json"), "w") as f:
        json.dump(spec, f, indent=1)
    tensors = {name: p for name, p in model.named_parameters()}
    tensors.update(buffers)
    save_safetensors(os.path.join(directory, "weights.safetensors"), tensors)


def export_data(path, inputs, targets):
    """inputs [N, ...] float or uint8 (pixels), or int64 / int32 token indices for a model that starts with an
    embedding; targets int64 [N] (categorical) or float [N, C]."""
    save_safetensors(path, {"inputs": inputs, "targets": targets})


def to_vector(model, tensors):
    """A {name: tensor} dict in state_dict names as one flat vector (parameters_to_vector order)."""
    return torch.cat([tensors[name].reshape(-1).to(p.dtype) for name, p in model.named_parameters()])


def example(kind):
    torch.manual_seed(0)
    if kind == "cnn":
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 10)), [1, 28, 28]
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.Tanh(),
                               torch.nn.Linear(64, 10)), [1, 28, 28]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--example", choices=["mlp", "cnn"], default="mlp")
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=256)
    a = ap.parse_args()
    model, shape = example(a.example)
    export_model(model, shape, "categorical", a.out)
    export_data(os.path.join(a.out, "data.safetensors"), torch.rand(a.samples, *shape),
                torch.randint(0, 10, (a.samples,)))
    print(f"wrote {a.out}/model.json, weights.safetensors, data.safetensors")
