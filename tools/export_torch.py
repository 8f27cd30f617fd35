#!/usr/bin/env python3
"""Export a PyTorch module to natgrad's files, and read natgrad's outputs back.

    from export_torch import export_model, export_data, load_safetensors, to_vector
    export_model(model, input_shape=[1, 28, 28], likelihood="categorical", directory="out")
        -> out/model.json, out/weights.safetensors
    export_data("out/data.safetensors", inputs, targets)
    d = load_safetensors("direction.safetensors")          # {name: tensor}, the parameters' state_dict names
    with torch.no_grad():                                  # a step θ ← θ − η d (not weights to load)
        for name, p in model.named_parameters():
            p -= lr * d[name]
    v = to_vector(model, d)                                # or as one flat vector, parameters_to_vector order

Command line (writes a small example model and dataset):
    python3 tools/export_torch.py --example cnn --out DIR [--samples N]

export_model accepts any module that torch.fx.symbolic_trace traces into supported modules (Linear (on the
last dimension), Conv2d
with numeric or "same" padding, ReLU, Tanh, Sigmoid, GELU, Softplus, LeakyReLU, SiLU, Flatten, MaxPool2d,
AvgPool2d, AdaptiveAvgPool2d(1), BatchNorm1d/2d and Dropout in eval mode, LayerNorm, Embedding, Identity,
GELU in its erf or tanh form, MultiheadAttention(batch_first=True) called as self-attention
attn(h, h, h, attn_mask=self.mask, need_weights=...)[0] with a causal mask buffer or none) and
functions (+ of two tensors or of a tensor and an nn.Parameter, torch.cat along dim 1, torch.relu / tanh /
sigmoid, F.relu / gelu / softplus / leaky_relu / silu / dropout(training=False) / adaptive_avg_pool2d(x, 1),
torch.flatten(x, 1), x.mean((2, 3))). Anything else is an error naming the node, its target and the module
whose forward called it. The model must be in eval mode if it has batch norm or dropout.
safetensors is written directly (8-byte little-endian header length, JSON header, raw little-endian data).
"""
import argparse
import json
import operator
import os
import struct

import torch

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


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def module_spec(m):
    """The spec of one supported module (its keys, without name, id and inputs)."""
    nn = torch.nn
    if isinstance(m, nn.Linear):
        return {"type": "linear", "in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or _pair(m.dilation) != [1, 1] or m.padding_mode != "zeros":
            raise ValueError(f"{m}: natgrad supports conv2d with groups=1, dilation=1 and zero padding")
        padding = m.padding if isinstance(m.padding, str) else _pair(m.padding)
        if padding == "valid":
            padding = [0, 0]
        return {"type": "conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride), "padding": padding,
                "bias": m.bias is not None}
    simple = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.Identity: "identity"}
    for cls, name in simple.items():
        if type(m) is cls:
            return {"type": name}
    if isinstance(m, nn.GELU):
        approximate = getattr(m, "approximate", "none")
        return {"type": "gelu", "approximate": approximate} if approximate == "tanh" else {"type": "gelu"}
    if isinstance(m, nn.Softplus):
        if m.beta != 1 or m.threshold != 20:
            raise ValueError("natgrad's softplus has beta=1, threshold=20")
        return {"type": "softplus"}
    if isinstance(m, nn.LeakyReLU):
        return {"type": "leaky_relu", "negative_slope": m.negative_slope}
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise ValueError("natgrad's flatten flattens all but the batch dimension")
        return {"type": "flatten"}
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        if (isinstance(m, nn.AvgPool2d) and _pair(m.padding) != [0, 0]) or m.ceil_mode or \
                (isinstance(m, nn.MaxPool2d) and _pair(m.dilation) != [1, 1]):
            raise ValueError(f"{m}: natgrad pools without dilation or ceil_mode, and pads max-pooling only")
        if isinstance(m, nn.AvgPool2d) and m.divisor_override is not None:
            raise ValueError(f"{m}: natgrad's avgpool2d has no divisor_override")
        spec = {"type": "maxpool2d" if isinstance(m, nn.MaxPool2d) else "avgpool2d", "kernel_size": _pair(m.kernel_size)}
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
        if m.training:
            raise ValueError(f"{m} is in training mode: it zeroes random entries; call model.eval() before exporting")
        return {"type": "dropout", "p": m.p}
    raise ValueError(f"module {type(m).__name__} is not supported by natgrad")


class _Tracer(torch.fx.Tracer):
    """symbolic_trace's tracer that also records, for every node, the path of the module whose forward made it."""

    def __init__(self):
        super().__init__()
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
        return node


def _activation_function(node):
    """The spec of a functional activation / reshaping call, or None if the call is not one."""
    F = torch.nn.functional
    t, a, kw = node.target, node.args, node.kwargs
    if node.op == "call_method":  # x.relu(), x.flatten(1), x.mean((2, 3)): the functions of the same name
        t = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "flatten": torch.flatten,
             "mean": torch.mean}.get(t)
    table = {torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", torch.sigmoid: "sigmoid", F.silu: "silu"}
    if t in table:
        return {"type": table[t]}
    if t is F.gelu:
        approximate = kw.get("approximate", "none")
        if approximate not in ("none", "tanh"):
            raise ValueError(f"F.gelu(approximate={approximate!r}) is not supported")
        return {"type": "gelu", "approximate": approximate} if approximate == "tanh" else {"type": "gelu"}
    if t is F.softplus:
        beta = a[1] if len(a) > 1 else kw.get("beta", 1)
        threshold = a[2] if len(a) > 2 else kw.get("threshold", 20)
        if (beta, threshold) != (1, 20):
            raise ValueError("natgrad's softplus has beta=1, threshold=20")
        return {"type": "softplus"}
    if t is F.leaky_relu:
        return {"type": "leaky_relu", "negative_slope": a[1] if len(a) > 1 else kw.get("negative_slope", 0.01)}
    if t is torch.flatten:
        start = a[1] if len(a) > 1 else kw.get("start_dim", 0)
        end = a[2] if len(a) > 2 else kw.get("end_dim", -1)
        return {"type": "flatten"} if (start, end) == (1, -1) else None
    if t is F.dropout:
        training = a[2] if len(a) > 2 else kw.get("training", True)
        if training:
            raise ValueError("F.dropout with training=True zeroes random entries; pass training=self.training and "
                             "call model.eval() before exporting")
        return {"type": "dropout", "p": a[1] if len(a) > 1 else kw.get("p", 0.5)}
    if t is F.adaptive_avg_pool2d:
        size = a[1] if len(a) > 1 else kw.get("output_size")
        return {"type": "global_avgpool", "keepdim": True} if _pair(size) == [1, 1] else None
    if t is torch.mean:
        return _mean_spec(node, a[1] if len(a) > 1 else kw.get("dim"), kw.get("keepdim", a[2] if len(a) > 2 else False))
    return None


def _mean_spec(node, dim, keepdim):
    rank = len(node.args[0].meta["tensor_meta"].shape)
    if rank != 4 or dim is None:
        return None
    dims = sorted(d % 4 for d in (dim if isinstance(dim, (tuple, list)) else [dim]))
    return {"type": "global_avgpool", "keepdim": bool(keepdim)} if dims == [2, 3] else None


def _attention_call(node, buffers):
    """Checks a call attn(h, h, h, attn_mask=M, need_weights=...) is self-attention with a buffer or no mask;
    returns the mask buffer's name or None."""
    names = ["query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal"]
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    if not (args.get("query") is args.get("key") is args.get("value")) or not isinstance(args.get("query"), torch.fx.Node):
        raise ValueError(f"{_where(node)}: natgrad supports self-attention, attn(h, h, h, ...)")
    if args.get("key_padding_mask") is not None:
        raise ValueError(f"{_where(node)}: key_padding_mask is not supported")
    if args.get("is_causal", False) and args.get("attn_mask") is None:
        raise ValueError(f"{_where(node)}: is_causal=True needs the causal attn_mask buffer")
    mask = args.get("attn_mask")
    if mask is None:
        return None
    if not isinstance(mask, torch.fx.Node) or mask.op != "get_attr" or mask.target not in buffers:
        raise ValueError(f"{_where(node)}: attn_mask must be a module buffer read as it is (self.mask), not "
                         f"{getattr(mask, 'name', mask)!r}")
    return mask.target


def _where(node):
    path = node.meta.get("module_path", "")
    return f"node {node.name} ({node.op} {getattr(node.target, '__name__', node.target)}" + \
        (f", in module {path!r}" if path else ", in the top-level forward") + ")"


def graph_spec(model, input_shape, likelihood):
    """The natgrad model spec (a dict) of any module torch.fx traces into supported modules and functions,
    and the names of the buffers its operations need."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    gm = torch.fx.GraphModule(tracer.root, graph)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())  # a tied tensor once, under its first name
    first_name = {id(t): name for name, t in params.items()}
    buffers = dict(model.named_buffers())
    # The example input: token indices if an embedding reads the input directly.
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"natgrad models take one input; forward takes {len(placeholders)}")
    token_input = any(n.op == "call_module" and isinstance(modules.get(n.target), torch.nn.Embedding)
                      and n.args and n.args[0] is placeholders[0] for n in graph.nodes)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    example = torch.zeros(2, *input_shape, dtype=torch.long if token_input else dtype)
    from torch.fx.passes.shape_prop import ShapeProp
    ShapeProp(gm).propagate(example)

    layers, needed_buffers, called = [], [], {}
    ids = {placeholders[0]: "input"}
    output = None

    def operand(node, arg):
        if not isinstance(arg, torch.fx.Node) or arg not in ids:
            raise ValueError(f"{_where(node)}: operand {arg!r} is not a tensor natgrad computes")
        return ids[arg]

    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue  # a get_attr is taken up by the add that reads it
        if node.op == "output":
            output = node.args[0]
            if not isinstance(output, torch.fx.Node):
                raise ValueError("the model must return one tensor")
            continue
        spec = None
        if node.op == "call_module":
            m = modules[node.target]
            if isinstance(m, torch.nn.MultiheadAttention) and \
                    any(u.op != "call_function" or u.target is not operator.getitem for u in node.users):
                raise ValueError(f"{_where(node)}: use attention's output as attn(...)[0]")
            try:
                spec = dict(module_spec(m), name=node.target)
            except ValueError as e:
                raise ValueError(f"{_where(node)}: {e}") from None
            if spec["type"] == "multihead_attention":
                mask = _attention_call(node, buffers)
                if mask is not None:
                    spec["attn_mask"] = mask
                    spec["attn_mask_dtype"] = "bool" if buffers[mask].dtype == torch.bool else "float"
                    needed_buffers.append(mask)
            elif len(node.args) != 1 or node.kwargs:
                raise ValueError(f"{_where(node)}: natgrad calls a module with one tensor argument")
            own = list(m.named_parameters(recurse=False))
            if own and any(first_name[id(t)] != f"{node.target}.{local}" for local, t in own):
                # Tied weights (head.weight = tok.weight): the node names the tensors it shares.
                spec["parameter_names"] = [first_name[id(t)] for _, t in own]
            if own:
                if node.target in called:
                    raise ValueError(f"{_where(node)}: module {node.target!r} is called twice; shared parameters "
                                     "are not supported")
                called[node.target] = True
            if spec["type"] == "batch_norm":
                needed_buffers += [f"{node.target}.running_mean", f"{node.target}.running_var",
                                   f"{node.target}.num_batches_tracked"]
            spec["inputs"] = [operand(node, node.args[0])]
        elif node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add) or \
                node.op == "call_method" and node.target == "add":
            if len(node.args) != 2 or set(node.kwargs) - {"alpha"} or node.kwargs.get("alpha", 1) != 1:
                raise ValueError(f"{_where(node)}: natgrad adds two tensors (no alpha)")
            spec = {"type": "add", "inputs": []}
            for arg in node.args:
                if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
                    if arg.target not in params or "parameter" in spec:
                        raise ValueError(f"{_where(node)}: natgrad adds a parameter read in forward, and "
                                         f"{arg.target!r} is not a parameter")
                    spec["parameter"] = arg.target
                    spec["parameter_shape"] = list(params[arg.target].shape)
                else:
                    spec["inputs"].append(operand(node, arg))
        elif node.op == "call_function" and node.target is operator.getitem and \
                isinstance(node.args[0], torch.fx.Node) and node.args[0].op == "call_module" and \
                isinstance(modules[node.args[0].target], torch.nn.MultiheadAttention):
            if node.args[1] != 0:
                raise ValueError(f"{_where(node)}: natgrad computes attention's output [0], not its weights")
            ids[node] = ids[node.args[0]]  # attn(...)[0] is the attention node's output
            continue
        elif node.op == "call_function" and node.target is torch.cat:
            tensors = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            rank = len(node.meta["tensor_meta"].shape)
            if dim % rank != 1:
                raise ValueError(f"{_where(node)}: natgrad concatenates along dimension 1 (channels or features), "
                                 f"not {dim}")
            spec = {"type": "cat", "dim": 1, "inputs": [operand(node, t) for t in tensors]}
        elif node.op in ("call_function", "call_method"):
            spec = _activation_function(node)
            if spec is not None:
                spec["inputs"] = [operand(node, node.args[0])]
        if spec is None:
            raise ValueError(f"{_where(node)} is not supported by natgrad")
        spec["id"] = node.name
        ids[node] = node.name
        layers.append(spec)
    if output not in ids or output is placeholders[0]:
        raise ValueError("the model's output must be computed by a supported operation")
    module_names = {l["name"] for l in layers if "name" in l}
    module_names |= {l["name"] + ".out_proj" for l in layers if l["type"] == "multihead_attention"}
    operands = {l["parameter"] for l in layers if "parameter" in l}
    unused = [n for n in params if n.rsplit(".", 1)[0] not in module_names and n not in operands]
    if unused:
        raise ValueError(f"parameters {unused} are not used by the traced forward; natgrad's flat vector would "
                         "not match model.parameters()")
    spec = {"format_version": 2, "input_shape": list(input_shape), "likelihood": likelihood,
            "output": ids[output], "parameters": list(params), "layers": layers}
    return spec, [b for b in needed_buffers if b in buffers]


def export_model(model, input_shape, likelihood, directory):
    """Writes model.json and weights.safetensors for any module torch.fx traces into supported operations
    (an nn.Sequential is one). Parameters keep their state_dict names and model.parameters() order; the
    buffers the operations need (batch norm's running_mean, running_var and num_batches_tracked, an
    attention mask) are written beside them."""
    spec, needed = graph_spec(model, input_shape, likelihood)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "model.json"), "w") as f:
        json.dump(spec, f, indent=1)
    buffers = dict(model.named_buffers())
    tensors = {name: p for name, p in model.named_parameters()}
    tensors.update({name: buffers[name] for name in needed})
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
