"""PatchUp (and the other methods) in a network you already have.

`attach(model, method)` returns a `MixingModel` over the very layers of
`model` (the weights are shared, not copied), with `MixingPoint` layers
inserted after the stem and the first resolution stages. Training the
returned model trains `model`; `model.predict` afterwards gives the trained
network. It works with `keras.applications` backbones, nested ones included:

>>> backbone = keras.applications.ResNet50V2(
...     include_top=False, weights=None, input_shape=(32, 32, 3))
>>> model = keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D(),
...                           keras.layers.Dense(10)])
>>> trained = attach(model, "soft_patchup", seed=0)
>>> trained.compile(optimizer="sgd")

Where the points go (`points="auto"`): the *cut points* of a model are the
tensors through which every path from the input to the output passes (a
point inside one branch of a residual block would mix that branch only).
`cut_points(model)` lists them. Among the 4-D cut points that follow the
first convolution (a layer with a kernel), in graph order, any whose spatial
size exceeds that of an earlier one (or of the input) is skipped, e.g. a
zero-padding output; positions 1, 2, 3, 4 are then the *last* cut point of
each of the first four spatial sizes, i.e. the end of the stem and of the
first three resolution stages.
"""

import keras

from patchup_tf.any_size import AnySizeMixingModel
from patchup_tf.heads import check_logits
from patchup_tf.layers.mixing_point import MixingPoint
from patchup_tf.methods import NUM_POSITIONS, Method
from patchup_tf.rules import mixing_point_name
from patchup_tf.training import MixingModel

_MAX_POINTS = NUM_POSITIONS - 1
_PROBE_SIDE = 224
"""The image side at which 'auto' reads a model of unknown input size (the
ImageNet backbones' own): where the stages end does not depend on it."""


# ------------------------------------------------------------------ graph
def _producer(tensor):
    """The `(layer, node)` whose call computed `tensor`.

    The only place this module reads Keras internals: the public API lists a
    model's layers (`model.operations`) but not how their calls connect, so
    the graph is read from `KerasTensor._keras_history` and
    `Operation._inbound_nodes` (the structure `keras.Model` itself walks).
    """
    history = tensor._keras_history
    operation = history.operation
    return operation, operation._inbound_nodes[history.node_index]


def _is_graph_model(layer):
    """A functional or (built) Sequential model: a graph to look into."""
    if not isinstance(layer, keras.Model):
        return False
    try:
        return bool(layer.inputs) and bool(layer.outputs)
    except (AttributeError, ValueError):
        return False


def _nodes_in_order(model):
    """The call nodes of `model`'s graph, inputs first (iterative DFS)."""
    stop = {id(t) for t in model.inputs}
    order, state = [], {}
    stack = [(_producer(t)[1], False) for t in reversed(model.outputs) if id(t) not in stop]
    while stack:
        node, done = stack.pop()
        if done:
            if state.get(id(node)) != "done":
                state[id(node)] = "done"
                order.append(node)
            continue
        if id(node) in state:
            continue
        state[id(node)] = "open"
        stack.append((node, True))
        for t in reversed(node.input_tensors):
            if id(t) in stop:
                continue
            parent = _producer(t)[1]
            if id(parent) not in state:
                stack.append((parent, False))
    return order


class _Vertex:
    """One tensor of the flattened graph (nested models looked into)."""

    __slots__ = ("index", "shape", "layer", "out", "probe")

    def __init__(self, index, shape, layer, probe=None):
        self.index = index  # a topological position
        self.shape = tuple(shape)
        self.layer = layer  # the layer whose output it is; None for the input
        self.out = []  # indices of the vertices computed from this one
        self.probe = probe  # its shape on a `_PROBE_SIDE` input (None: not probed)


def _probe_shapes(node, ins):
    """The shapes of `node`'s outputs when its inputs have the vertices'
    `probe` shapes (Keras' shape inference, as `keras.Model` runs its
    graph); Nones where not probed or the layer cannot tell."""
    unknown = [None] * len(node.output_tensors)
    if not ins or any(v.probe is None for v in ins):
        return unknown
    given = {id(t): keras.KerasTensor(v.probe, dtype=t.dtype)
             for t, v in zip(node.input_tensors, ins)}
    args, kwargs = node.arguments.fill_in(given)
    try:
        specs = keras.tree.flatten(node.operation.compute_output_spec(*args, **kwargs))
    except Exception:  # any layer's own error: its sizes stay unknown
        return unknown
    if len(specs) != len(unknown):
        return unknown
    return [tuple(spec.shape) for spec in specs]


class _Graph:
    """The tensors of `model`, nested models flattened, in topological order.

    The output of a nested model's call is the tensor its last layer
    computed, so a point "after the backbone" goes inside the backbone.
    With `probe`, a model whose input size is unknown is also read on
    `_PROBE_SIDE`-square images: each vertex's `probe` shape.
    """

    def __init__(self, model, probe=False):
        self.vertices = []
        self.calls = {}  # id(layer) -> number of calls in the whole graph
        self.names = {}  # name -> list of vertices (models: their output)
        (t,) = model.inputs
        shape = tuple(t.shape)
        probing = probe and None in shape[1:3]
        side = (shape[0], _PROBE_SIDE, _PROBE_SIDE, *shape[3:])
        (source,) = self.inputs = [self._new(shape, None, side if probing else None)]
        self.outputs = self._walk(model, [source])

    def _new(self, shape, layer, probe=None):
        vertex = _Vertex(len(self.vertices), shape, layer, probe)
        self.vertices.append(vertex)
        return vertex

    def _walk(self, model, inputs):
        env = {id(t): v for t, v in zip(model.inputs, inputs)}
        for node in _nodes_in_order(model):
            layer = node.operation
            ins = [env[id(t)] for t in node.input_tensors]
            self.calls[id(layer)] = self.calls.get(id(layer), 0) + 1
            if _is_graph_model(layer) and len(ins) == len(layer.inputs):
                outs = self._walk(layer, ins)
            else:
                probes = _probe_shapes(node, ins)
                outs = [self._new(t.shape, layer, p)
                        for t, p in zip(node.output_tensors, probes)]
                for a in ins:
                    a.out.extend(v.index for v in outs)
            for t, v in zip(node.output_tensors, outs):
                env[id(t)] = v
            if len(outs) == 1:
                self.names.setdefault(layer.name, []).append(outs[0])
        return [env[id(t)] for t in model.outputs]

    def cut_vertices(self):
        """Vertices on every input -> output path, in graph order.

        With the vertices in topological order, `v` is on every path iff no
        edge jumps over it (from before `v` to after it).
        """
        (source,), (sink,) = self.inputs, self.outputs
        relevant = self._between(source, sink)
        cuts, reach = [], -1
        for v in self.vertices:
            if v.index not in relevant:
                continue
            if reach <= v.index:
                cuts.append(v)
            reach = max([reach] + [w for w in v.out if w in relevant])
        return cuts

    def _between(self, source, sink):
        """Indices of the vertices on some source -> sink path."""
        forward = {source.index}
        for v in self.vertices:
            if v.index in forward:
                forward.update(v.out)
        backward = {sink.index}
        for v in reversed(self.vertices):
            if any(w in backward for w in v.out):
                backward.add(v.index)
        return forward & backward


# ------------------------------------------------------------- checking
def _check_model(model):
    if not isinstance(model, keras.Model) or not _is_graph_model(model):
        raise ValueError(
            "Invalid value received for argument `model`. Expected a built "
            "functional or Sequential `keras.Model` (subclassed models have no "
            "graph to insert mixing points into; give a Sequential model an "
            f"input shape). Received: model={model!r}"
        )
    if any(isinstance(layer, MixingPoint) for layer in _graph_layers(model)):
        raise ValueError(
            "Invalid value received for argument `model`. It already has "
            "MixingPoint layers; attach the network without them (or build a "
            f"`MixingModel` from it directly). Received: model={model.name!r}"
        )
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        shapes = [tuple(t.shape) for t in model.inputs]
        raise ValueError(
            "Invalid value received for argument `model`. Expected one input "
            f"of images (N, H, W, C). Received: a model with inputs {shapes}"
        )
    outputs = model.outputs
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        shapes = [tuple(t.shape) for t in outputs]
        raise ValueError(
            "Invalid value received for argument `model`. Expected one output "
            "of logits (N, K): end the network with e.g. `GlobalAveragePooling2D()` "
            f"and `Dense(num_classes)`. Received: a model with outputs {shapes}"
        )


def _spatial(vertex):
    return tuple(vertex.shape[1:3])


def _probed(vertex):
    """Its spatial size; on the probe images if the model's is unknown."""
    return _spatial(vertex) if vertex.probe is None else tuple(vertex.probe[1:3])


def _has_kernel(layer):
    return layer is not None and any(
        "kernel" in v.name for v in getattr(layer, "weights", [])
    )


def _candidates(graph):
    """The 4-D cut points a mixing point may follow, in graph order."""
    (source,) = graph.inputs
    return [
        v for v in graph.cut_vertices()
        if v is not source and len(v.shape) == 4 and graph.calls[id(v.layer)] == 1
    ]


def _describe(vertices):
    return ", ".join(f"{v.layer.name} {_size(v)}" for v in vertices) or "none"


def _size(vertex):
    return "x".join("?" if side is None else str(side) for side in _spatial(vertex))


def _auto_vertices(graph):
    """The last cut point of each of the first four spatial sizes."""
    (source,) = graph.inputs
    cuts = _candidates(graph)
    if any(None in _probed(v) for v in cuts):
        raise ValueError(
            "Invalid value received for argument `points`. 'auto' reads the "
            "feature-map sizes, and this model's are unknown (even on "
            f"{_PROBE_SIDE}x{_PROBE_SIDE} images). Build it with a fixed input "
            "size (e.g. `input_shape=(64, 64, 3)`) or pass the layer names. "
            "Received: points='auto'"
        )
    cut = {v.index for v in cuts}
    last = _probed(source)
    groups = []  # [(size, last vertex of that size)]
    started = False
    for v in graph.vertices:
        started = started or _has_kernel(v.layer)
        if v.index not in cut:
            continue
        size = _probed(v)
        if any(s is not None and l is not None and s > l for s, l in zip(size, last)):
            continue  # larger than before (zero padding): not a stage end
        last = size
        if not started:
            continue  # the input and its preprocessing
        if groups and groups[-1][0] == size:
            groups[-1] = (size, v)
        else:
            groups.append((size, v))
    return [v for _, v in groups[:_MAX_POINTS]]


def _explicit_vertices(graph, points):
    if not isinstance(points, (list, tuple)) or not all(isinstance(n, str) for n in points):
        raise ValueError(
            "Invalid value received for argument `points`. Expected 'auto' or a "
            f"list of layer names (see `cut_points(model)`). Received: points={points!r}"
        )
    valid = _candidates(graph)
    listing = _describe(valid)
    if len(points) > _MAX_POINTS:
        raise ValueError(
            f"Invalid value received for argument `points`. Expected at most "
            f"{_MAX_POINTS} layer names (positions 1..{_MAX_POINTS}). "
            f"Received: points={list(points)!r}"
        )
    if len(set(points)) != len(points):
        raise ValueError(
            "Invalid value received for argument `points`. Each layer may hold "
            f"one position; remove the repeated names. Received: points={list(points)!r}"
        )
    chosen = []
    for name in points:
        found = graph.names.get(name, [])
        if not found:
            raise ValueError(
                f"Invalid value received for argument `points`. The model has no "
                f"layer named {name!r}. The valid cut points (name, size) are: "
                f"{listing}. Received: points={list(points)!r}"
            )
        if len(found) > 1 or graph.calls[id(found[0].layer)] > 1:
            raise ValueError(
                f"Invalid value received for argument `points`. The name {name!r} "
                "stands for more than one place (a layer called more than once, "
                "or one name in several nested models). Choose one of the cut "
                f"points: {listing}. Received: points={list(points)!r}"
            )
        (vertex,) = found
        if len(vertex.shape) != 4:
            raise ValueError(
                f"Invalid value received for argument `points`. Layer {name!r} "
                f"outputs {vertex.shape}, not a feature map (N, H, W, C). Choose "
                f"one of the cut points: {listing}. Received: points={list(points)!r}"
            )
        if vertex not in valid:
            raise ValueError(
                f"Invalid value received for argument `points`. Layer {name!r} "
                "is inside a branch (some path from the input to the output "
                "avoids it), so mixing there would mix that branch only. Choose "
                f"one of the cut points: {listing}. Received: points={list(points)!r}"
            )
        chosen.append(vertex)
    return chosen


# ------------------------------------------------------------ rewriting
def _as_functional(model):
    """A fresh, uncompiled functional model over `model`'s graph (Sequential
    models included), so that cloning it compiles nothing."""
    # `inputs`/`outputs`, not `input`/`output`: a nested Sequential's
    # `input` is that of its call in the enclosing graph.
    inputs, outputs = model.inputs, model.outputs
    return keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs[0] if len(outputs) == 1 else outputs,
        name=model.name,
    )


def _graph_layers(model):
    """Every layer of `model`'s graph, nested models looked into."""
    layers, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        layers.append(layer)
        if _is_graph_model(layer):
            stack.extend(layer.layers)
    return layers


def _rewrite(model, positions, names):
    """A functional copy of `model`'s graph over the same layer objects,
    `MixingPoint(p)` after each layer `positions` maps to `p`."""
    inner = {}  # id(nested model) -> does it hold a chosen layer

    def holds_point(layer):
        if id(layer) not in inner:
            inner[id(layer)] = any(id(sub) in positions for sub in _graph_layers(layer))
        return inner[id(layer)]

    def clone_function(layer):
        if _is_graph_model(layer) and holds_point(layer):
            return _rewrite(layer, positions, names)
        return layer  # shared, not copied

    def call_function(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        position = positions.get(id(layer))
        if position is not None:
            outputs = MixingPoint(position, name=names[position])(outputs)
        return outputs

    clone = keras.models.clone_model(
        _as_functional(model), clone_function=clone_function, call_function=call_function
    )
    if not model.trainable:
        clone.trainable = False  # as Keras does when it loads the model
    return clone


def _point_names(model):
    taken = {layer.name for layer in _graph_layers(model)}
    names = {}
    for p in range(1, _MAX_POINTS + 1):
        name, i = mixing_point_name(p), 1
        while name in taken:
            name, i = f"{mixing_point_name(p)}_{i}", i + 1
        names[p] = name
    return names


# ------------------------------------------------------------- outputs
def layer_outputs(model, layers):
    """The outputs of `layers` (layers of `model`'s graph, nested models
    looked into, each called once) as tensors of `model.inputs`, so that
    `keras.Model(model.inputs, ...)` can end on them: the graph is called
    again with nested models flattened (the same layers, weights shared)."""
    wanted = {id(layer) for layer in layers}
    found = {}
    env = {id(t): t for t in model.inputs}
    _call_flat(model, env, wanted, found)
    missing = [layer.name for layer in layers if id(layer) not in found]
    if missing:
        raise ValueError(
            "Invalid value received for argument `layers`. Expected layers of the "
            "model's graph with one output each (called once). Received: "
            f"layers named {missing}"
        )
    return [found[id(layer)] for layer in layers]


def _call_flat(model, env, wanted, found):
    """Calls the layers of `model`'s graph on the tensors in `env` (`id` of
    a tensor of the graph -> its new value); keeps the outputs of `wanted`."""
    for node in _nodes_in_order(model):
        layer = node.operation
        if _is_graph_model(layer) and len(node.input_tensors) == len(layer.inputs):
            for t, inner in zip(node.input_tensors, layer.inputs):
                env[id(inner)] = env[id(t)]
            _call_flat(layer, env, wanted, found)
            outs = [env[id(t)] for t in layer.outputs]
        else:
            args, kwargs = node.arguments.fill_in(env)
            outs = keras.tree.flatten(layer(*args, **kwargs))
        for t, value in zip(node.output_tensors, outs):
            env[id(t)] = value
        if id(layer) in wanted and len(outs) == 1:
            found[id(layer)] = outs[0]


# ------------------------------------------------------------------ API
def cut_points(model):
    """The places of `model` where a mixing point may go.

    Returns a list of `(layer_name, (height, width))`, in graph order: the
    4-D feature maps (outputs of a layer called once) through which every
    path from the input to the output passes. Layers of nested models count;
    a nested model's output is named by its last layer.
    """
    _check_model(model)
    return [(v.layer.name, _spatial(v)) for v in _candidates(_Graph(model))]


def attach(model, method="soft_patchup", points="auto", seed=None, **method_options):
    """Trains `model` with `method`: a `MixingModel` over the same layers.

    Args:
        model: a built functional or Sequential `keras.Model` with one image
            input `(N, H, W, C)` and one logits output `(N, K)` (no final
            softmax). Nested models (e.g. a `keras.applications` backbone)
            are looked into.
        method: one of `patchup_tf.methods.METHODS`.
        points: `"auto"`, or a list of up to 4 layer names whose outputs
            become positions 1, 2, ... (see `cut_points(model)`). `"auto"`
            uses positions `1..k` (the method's hidden positions; none for
            the input-only methods) at the end of the stem and of the first
            three resolution stages (see the module docstring).
        seed: int for the per-batch plans (see `MixingModel`).
        **method_options: the method's options, e.g. `k`, `gamma`, `alpha`.

    Returns:
        A `MixingModel` sharing `model`'s layers and weights: frozen layers
        stay frozen, `predict`, `evaluate`, `save` and `export` see the
        plain network. Compile it with an optimizer only. For a model of
        unknown input size (`keras.Input((None, None, 3))`) an
        `AnySizeMixingModel`: it trains on batches of any one image size,
        the blocks sized from each batch's feature maps, and 'auto' finds
        the stage ends on `_PROBE_SIDE`-square (224) images.
    """
    method_obj = Method(method, **method_options)  # validates method and options
    _check_model(model)
    check_logits(model)
    graph = _Graph(model, probe=isinstance(points, str) and points == "auto")
    needed = len(method_obj.hidden_positions)
    if isinstance(points, str) and points == "auto":
        found = _auto_vertices(graph) if needed else []
        if len(found) < needed:
            raise ValueError(
                f"Invalid value received for argument `points`. Method "
                f"'{method}' mixes at positions 1..{needed}, but 'auto' found "
                f"{len(found)} stage end(s): {_describe(found)}. Pass "
                f"`points=[...]` (layer names from: {_describe(_candidates(graph))}), "
                "lower `k`, or use a larger input. Received: points='auto'"
            )
        chosen = found[:needed]
    else:
        chosen = _explicit_vertices(graph, points)
        if len(chosen) < needed:
            raise ValueError(
                f"Invalid value received for argument `points`. Method "
                f"'{method}' mixes at positions 1..{needed}; give {needed} layer "
                f"names or lower `k`. Received: points={list(points)!r}"
            )
    positions = {id(v.layer): p for p, v in enumerate(chosen, start=1)}
    clone = _rewrite(model, positions, _point_names(model))
    (inputs,), (outputs,) = clone.inputs, clone.outputs
    known = None not in tuple(inputs.shape[1:3])
    return (MixingModel if known else AnySizeMixingModel)(
        inputs, outputs, method=method, method_options=method_options, seed=seed,
        name=model.name,
    )


__all__ = ["attach", "cut_points"]
