"""Fixed inputs (part of the load stage): `--input NAME=VALUE` makes a graph input a constant
(a sample rate, a mode flag), and every `If` whose condition then becomes constant is replaced by
the branch it takes, so the weights inside that branch become ordinary, prunable layers. Pure
functions over protos; the written model keeps the binding (the input is gone from it).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxPruneError
from .layers import FLOATS, weights_of
from .layout import rename_in_bodies
from .plumbing import first_line, names_used_in_subgraphs, session, session_options


def split_binding(item: str) -> tuple[str, str]:
    """NAME=VALUE → (NAME, VALUE), or the one-line error."""
    name, sep, text = item.partition("=")
    if not sep or not name or not text:
        raise OnnxPruneError(f"--input {item!r}: expected NAME=VALUE, e.g. sr=16000")
    return name, text


def parse_inputs(items: tuple[str, ...], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """NAME=VALUE (a number, or comma-separated numbers filling the input's fixed shape) as
    arrays of the input's dtype and declared shape."""
    inits = {t.name for t in model.graph.initializer}
    declared = {i.name: i for i in model.graph.input if i.name not in inits}
    out = {}
    for item in items:
        name, text = split_binding(item)
        if name not in declared:
            raise OnnxPruneError(f"--input {name}: not a model input ({', '.join(declared) or 'none'})")
        t = declared[name].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if None in dims:
            raise OnnxPruneError(f"--input {name}: the input has dynamic dimensions; only an input of fixed "
                                 "shape (a scalar, a flag) can be fixed")
        try:
            values = np.array([float(v) for v in text.split(",")])
        except ValueError:
            raise OnnxPruneError(f"--input {item!r}: VALUE must be a number or comma-separated numbers") from None
        size = int(np.prod(dims))
        if values.size not in (1, size):
            raise OnnxPruneError(f"--input {name}: {values.size} values for an input of shape {dims} ({size} values)")
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        out[name] = np.broadcast_to(values, (size,)).reshape(dims).astype(dtype)
    return out


def bind(model: onnx.ModelProto, fixed: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` with the inputs in `fixed` turned into initializers."""
    if not fixed:
        return model
    m = copy.deepcopy(model)
    for i in [i for i in m.graph.input if i.name in fixed]:
        m.graph.input.remove(i)
    for t in [t for t in m.graph.initializer if t.name in fixed]:
        m.graph.initializer.remove(t)
    m.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in fixed.items())
    return m


def static_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each `Gather(Shape(x), i)` that reads only dims the graph fixes (`state [2, batch, 128]`:
    dim 0 is always 2) replaced by that constant, so an If it decides folds for good: the same
    branch runs at every batch size and length the model accepts."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an unknown op or a broken value_info: nothing is folded
        return model
    dims = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            dims[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    inits.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                  if a.name == "value"})
    fixed = {}
    for node in model.graph.node:
        shape = producer.get(node.input[0]) if node.op_type == "Gather" and len(node.input) == 2 else None
        if shape is None or shape.op_type != "Shape" or shape.attribute or node.input[1] not in inits:
            continue
        known = dims.get(shape.input[0])
        index = numpy_helper.to_array(inits[node.input[1]])
        if known is None or index.dtype.kind not in "iu" or any(a.i for a in node.attribute if a.name == "axis"):
            continue
        picked = [known[int(i)] if -len(known) <= int(i) < len(known) else None for i in index.reshape(-1)]
        if picked and all(d is not None for d in picked):
            fixed[node.output[0]] = np.array(picked, np.int64).reshape(index.shape)
    if not fixed:
        return model
    model = copy.deepcopy(model)
    kept = [n for n in model.graph.node if not (n.op_type == "Gather" and n.output[0] in fixed)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in fixed.items())
    return model


def fold_ifs(model: onnx.ModelProto, shapes: dict | None = None) -> tuple[onnx.ModelProto, int]:
    """Every `If` whose condition the stored constants decide (and, given the tensor `shapes` a
    graph runs at, the shapes of its tensors), replaced by the nodes of the branch it takes
    (nested ones too); the graph re-sorted. Returns the model and how many were folded."""
    folded = 0
    while True:
        conditions = _constant_conditions(model, shapes)
        if not conditions:
            return model, folded
        model = copy.deepcopy(model)
        graph = model.graph
        taken = ({o for n in graph.node for o in n.output} | {t.name for t in graph.initializer}
                 | {i.name for i in graph.input})
        body = []
        for k, node in enumerate(graph.node):
            if node.op_type == "If" and node.output[0] in conditions:
                branch = next(a.g for a in node.attribute
                              if a.name == ("then_branch" if conditions[node.output[0]] else "else_branch"))
                inlined = _inline(branch, node, graph, taken, f"{node.name or 'if'}{k}")
                taken.update(o for n in inlined for o in n.output)
                body.extend(inlined)
                folded += 1
            else:
                body.append(node)
        del graph.node[:]
        graph.node.extend(_sorted(body, graph))


def _constant_conditions(model: onnx.ModelProto, shapes: dict | None = None) -> dict[str, bool]:
    """If node (by its first output) -> the value of its condition, for conditions computed from
    initializers and Constant nodes alone, or (with `shapes`) from the shapes of tensors."""
    graph = model.graph
    known = {t.name for t in graph.initializer}
    measured: dict[str, np.ndarray] = {}  # Shape outputs read off `shapes`
    producer = {o: n for n in graph.node for o in n.output}
    ifs = [n for n in graph.node if n.op_type == "If" and n.domain in ("", "ai.onnx")]
    if not ifs:
        return {}

    def cone(name, seen):  # the nodes that compute `name` from constants, or None
        if name in known or name in seen:
            return []
        node = producer.get(name)
        if node is not None and node.op_type == "Shape" and shapes and node.input[0] in shapes:
            attrs = {a.name: a.i for a in node.attribute}
            dims = np.array(shapes[node.input[0]], np.int64)
            measured[name] = dims[attrs.get("start", 0): attrs.get("end", len(dims))]
            seen.add(name)
            return []
        if node is None or node.op_type in ("If", "Loop", "Scan") or node.domain not in ("", "ai.onnx"):
            return None
        nodes = []
        for i in node.input:
            if i:
                sub = cone(i, seen)
                if sub is None:
                    return None
                nodes += sub
        seen.add(name)
        return nodes + [node]

    wanted = {}
    for n in ifs:
        nodes = cone(n.input[0], set())
        if nodes is not None:
            wanted[n.output[0]] = (n.input[0], nodes)
    if not wanted:
        return {}
    nodes = list({id(x): x for _, ns in wanted.values() for x in ns}.values())
    needed = {i for x in nodes for i in x.input} | {c for c, _ in wanted.values()}
    inits = [t for t in graph.initializer if t.name in needed]
    inits += [numpy_helper.from_array(v, k) for k, v in measured.items() if k in needed]
    outs = sorted({c for c, _ in wanted.values()})
    chosen = {id(x) for x in nodes if not (x.output and x.output[0] in measured)}
    g = helper.make_graph([x for x in graph.node if id(x) in chosen], "conditions", [],
                          [onnx.ValueInfoProto(name=o) for o in outs], inits)
    m = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        values = dict(zip(outs, session(m, "the If conditions", session_options(optimize=False)).run(outs, {})))
    except OnnxPruneError as e:
        raise OnnxPruneError(f"cannot evaluate the conditions of the model's If nodes: {first_line(e)}") from None
    return {out: bool(np.asarray(values[c]).reshape(-1)[0]) for out, (c, _) in wanted.items()}


def _inline(branch: onnx.GraphProto, node: onnx.NodeProto, graph: onnx.GraphProto, taken: set[str],
            tag: str) -> list[onnx.NodeProto]:
    """The branch's nodes, writing the If's outputs; its initializers move to `graph`. Names the
    branch makes that are `taken` in the outer graph get a suffix."""
    made = [o for n in branch.node for o in n.output if o] + [t.name for t in branch.initializer]
    results = {o.name: out for o, out in zip(branch.output, node.output)}
    rename = {name: f"{name}__{tag}" for name in made if name in taken and name not in results}
    produced = {o for n in branch.node for o in n.output}
    rename.update({k: v for k, v in results.items() if k in produced})  # readers inside follow too
    nodes = []
    for n in branch.node:
        n = copy.deepcopy(n)
        n.input[:] = [rename.get(i, i) for i in n.input]
        n.output[:] = [rename.get(o, o) for o in n.output]
        rename_in_bodies(n, rename)  # nested If bodies read the branch's tensors by name
        nodes.append(n)
    for t in branch.initializer:
        t = copy.deepcopy(t)
        t.name = rename.get(t.name, t.name)
        graph.initializer.append(t)
        taken.add(t.name)
    for o, out in results.items():  # a branch output that is an outer tensor or an initializer
        if o not in produced:
            nodes.append(helper.make_node("Identity", [rename.get(o, o)], [out], name=f"{out}__branch"))
    return nodes


def sort_graphs(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every graph, If/Loop bodies included, in topological order, in place (ORT's
    quantizer can leave a node before the If whose output it reads)."""
    def fix(g: onnx.GraphProto) -> None:
        for n in g.node:
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    fix(sub)
        nodes = _sorted(list(g.node), g)
        del g.node[:]
        g.node.extend(nodes)
    fix(model.graph)
    return model


def _sorted(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in an order where every input, and every outer tensor a subgraph reads, is made first
    (exporters do not always keep that order for what If branches capture)."""
    ready = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    needs = []
    for n in nodes:
        sub = set()
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                holder = helper.make_graph([n], "h", [], [])
                sub = names_used_in_subgraphs(holder)
        needs.append(set(n.input) | sub)
    produced = {o for n in nodes for o in n.output}
    out, left = [], list(range(len(nodes)))
    while left:
        progress = [k for k in left if all(x in ready or x not in produced for x in needs[k])]
        if not progress:  # a cycle (should not happen): keep the rest in their order
            out.extend(nodes[k] for k in left)
            break
        for k in progress:
            out.append(nodes[k])
            ready.update(nodes[k].output)
        left = [k for k in left if k not in set(progress)]
    return out


def branch_hint(model: onnx.ModelProto) -> str:
    """Why a model with no prunable layers in its main graph has weights after all: how many sit
    inside If/Loop bodies, and the input to fix where one selects the branch."""
    graph = model.graph
    outer = {t.name: t for t in graph.initializer}
    weights, selectors = 0, []
    fixed_inputs = {i.name for i in graph.input if i.name not in outer and i.type.tensor_type.HasField("shape")
                    and all(d.HasField("dim_value") for d in i.type.tensor_type.shape.dim)}
    producer = {o: n for n in graph.node for o in n.output}

    def reaches(name, seen):  # the graph inputs a tensor is computed from
        if name in seen:
            return set()
        seen.add(name)
        n = producer.get(name)
        if n is None:
            return {name} & fixed_inputs
        return set().union(*(reaches(i, seen) for i in n.input if i)) if n.input else set()

    def count(g: onnx.GraphProto) -> int:
        local = {t.name: t for t in g.initializer}
        local.update({n.output[0]: a.t for n in g.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
        total = 0
        for n in g.node:
            known = {**outer, **local}
            for weight, *_ in weights_of(n, known):
                t = known.get(weight)
                if t is not None and t.data_type in FLOATS and len(t.dims) >= 2:
                    total += int(np.prod(t.dims))
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    total += count(sub)
        return total

    for n in graph.node:
        if n.op_type in ("If", "Loop", "Scan"):
            inside = sum(count(a.g) for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
            if inside:
                weights += inside
                if n.op_type == "If":
                    selectors += sorted(reaches(n.input[0], set()))
    if not weights:
        return ""
    hint = (f"fix the input that selects the branch (--input {selectors[0]}=VALUE) to prune them" if selectors
            else "the branch is chosen from tensor shapes when the model runs, so no input fixes it")
    return f"{weights:,} weights are inside If/Loop bodies, which ONNX Runtime cannot train; {hint}"
