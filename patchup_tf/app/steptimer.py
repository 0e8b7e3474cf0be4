"""Timing training steps: wall-clock and process CPU seconds per step.

`time_steps(run, steps)` times any step function (a Keras train function,
a PyTorch loop, an input pipeline's `next`), ended by a host sync;
`KerasSteps` holds a compiled Keras model's train function over a dataset,
warmed up, and times it as `model.fit` runs it: one
`model.train_function(iterator)` call per step.

CPU seconds are the whole process's (`time.process_time`): on a machine
shared with other work, wall-clock time swings with the load while CPU
seconds per step barely move.
"""

import collections
import time

Timing = collections.namedtuple("Timing", ["wall_s", "cpu_s"])
Timing.__doc__ = "Seconds per step: wall-clock and this process's CPU time."


def time_steps(run, steps, *, sync=None, steps_per_call=1):
    """Times `steps` steps: `run()` called `steps / steps_per_call` times, then `sync(last)`.

    Args:
        run: makes `steps_per_call` steps per call and returns what `sync` needs.
        steps: the steps to time (a multiple of `steps_per_call`).
        sync: called on the last call's result before the clock stops (e.g.
            `.numpy()` on a loss: asynchronous work must finish inside the window).

    Returns:
        `Timing` per step.
    """
    if steps < 1 or steps % steps_per_call:
        raise ValueError(
            f"Invalid value received for argument `steps`. Expected a positive multiple of "
            f"steps_per_call={steps_per_call}. Received: steps={steps!r}")
    wall, cpu = time.perf_counter(), time.process_time()
    out = None
    for _ in range(steps // steps_per_call):
        out = run()
    if sync is not None:
        sync(out)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Timing(wall / steps, cpu / steps)


def sync_logs(logs):
    """Waits for a train function's logs (the loss's value crosses to the host)."""
    if logs:
        float(next(iter(logs.values())).numpy())


class KerasSteps:
    """A compiled Keras model's train steps over `dataset`, warmed up, ready to time.

    The warm-up is one `model.fit(dataset, epochs=1, steps_per_epoch=warmup)`
    (tracing and compiling the step) and one call of `model.train_function`
    on the iterator the timed steps will use. With `through_fit=True`
    `time(steps)` times one whole `fit` call of `steps` steps instead; off
    TensorFlow always (`train_function(iterator)` is TensorFlow's signature).
    """

    def __init__(self, model, dataset, *, warmup=1, through_fit=False):
        from patchup_tf import backend

        through_fit = through_fit or not backend.current().ITERATOR_TRAIN_FUNCTION
        self.model, self.dataset, self.through_fit = model, dataset, through_fit
        self.iterator = None
        self._fit(max(1, int(warmup)))
        if not through_fit:
            self.iterator = iter(dataset)
            model.make_train_function()
            sync_logs(model.train_function(self.iterator))

    def _fit(self, steps):
        self.model.fit(self.dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)

    def step(self):
        """One train step; its (not yet synced) logs."""
        return self.model.train_function(self.iterator)

    def time(self, steps):
        """`Timing` per step over `steps` steps."""
        if self.through_fit:
            return time_steps(lambda: self._fit(steps), steps, steps_per_call=steps)
        return time_steps(self.step, steps, sync=sync_logs)
