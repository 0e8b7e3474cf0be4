"""Counting traces: a counter in `train_step` (it runs in Python only while
`tf.function` traces it) and the tracing counts of the `tf.function`s
behind `model.train_function`. New traces during timed steps are retraces."""


def _tf_functions(fn, depth=8, seen=None):
    """The `tf.function`s reachable through `fn`'s closures (Keras' train_function)."""
    seen = set() if seen is None else seen
    found = []
    if fn is None or id(fn) in seen or depth < 0:
        return found
    seen.add(id(fn))
    if hasattr(fn, "experimental_get_tracing_count"):
        found.append(fn)
    inner = getattr(fn, "__wrapped__", None)
    if inner is not None:
        found += _tf_functions(inner, depth - 1, seen)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if callable(value) and not isinstance(value, type):
            found += _tf_functions(value, depth - 1, seen)
    return found


def tf_tracing_count(model):
    """Total traces of the `tf.function`s behind `model.train_function`, or None.

    Includes a `tf.function` the model keeps for its own XLA-compiled part
    of the step (`MixingModel._xla_step`), if any.
    """
    fns = _tf_functions(model.train_function)
    inner = getattr(model, "_xla_step", None)
    if inner is not None and hasattr(inner, "experimental_get_tracing_count"):
        fns.append(inner)
    if not fns:
        return None
    return sum(int(f.experimental_get_tracing_count()) for f in fns)


def count_traces(model):
    """Wraps `model.train_step` so `model._bench_traces` counts its traces."""
    step = model.train_step
    object.__setattr__(model, "_bench_traces", 0)

    def train_step(*args):  # (data), or (state, data) on JAX
        object.__setattr__(model, "_bench_traces", model._bench_traces + 1)
        return step(*args)

    object.__setattr__(model, "train_step", train_step)
    return model
