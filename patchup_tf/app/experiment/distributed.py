"""Training across hosts: a custom loop around `MixingModel.train_step`.

Keras 3's `model.fit` fails under `MultiWorkerMirroredStrategy` ("Attempt
to convert a value (PerReplica...)", keras-team/keras#20585), while
`strategy.experimental_distribute_dataset` + `strategy.run` around the same
step function works. So there is one step function and two drivers:
`model.fit` on one host (default or `MirroredStrategy`), `train_loop` across
hosts (`MultiWorkerMirroredStrategy`, `--strategy multi_worker`).

Data sharding. `dataset` yields *global* batches (`--batch_size`).
`train_loop` distributes it with tf.data's auto-shard policy DATA: every
worker builds the same deterministic stream (`train_epochs`: epoch `e` is a
pure function of `(seed, e)`), each global batch is re-batched into one
sub-batch per replica and every worker keeps its own replicas' sub-batches.
So the replicas of one step together see exactly the global batch a single
host would see (worker `i` of `n` gets the `i`-th slice of `batch/n`
images), resuming at any epoch stays exact, and the number of steps per
epoch does not change. An explicit `dataset.shard(num_workers, index)` of
the batched stream would instead hand each worker whole, different global
batches (halving the steps per epoch and doubling the effective batch); the
price of DATA is that every worker gathers and augments the whole global
batch and drops the other slices, which is small next to the network.

Each replica draws its own mixing plan (`MixingModel.step_seed` folds in
the replica id), so the two halves of a global batch are mixed
independently, as on several GPUs of one host. BatchNorm moving statistics
are per replica (not synchronised); the chief's are the ones checkpointed.

Callbacks and files. Every worker runs the same callbacks with the same
(reduced) logs, so they stop together (e.g. on a NaN loss). The epoch-end
evaluation involves no collective op (model and optimizer variables are
mirrored: each worker reads its local copy), so every worker evaluates
locally, on the whole validation and test sets, which keeps them in step.
Saving a `tf.train.Checkpoint` may involve collective ops, so at each epoch
end every worker saves one, as TensorFlow's multi-worker guide prescribes:
the chief into the experiment folder, the others into a local temporary
folder deleted right after (`patchup_tf.app.experiment.checkpoints`). The chief alone
writes the other files (logs, `.keras`, the SavedModel: the tests save those
on the chief alone); the other workers write nothing to the experiment
folder.

Checkpoints and preemption. The experiment's `checkpoints/` (model,
optimizer, progress and best weights, committed by the chief at each epoch
end through a `tf.train.CheckpointManager`, see `patchup_tf.app.experiment.checkpoints`)
plays the part of Keras' `BackupAndRestore` (`save_freq="epoch"`): a job
killed at any point, restarted with the same command on every worker,
resumes after the last completed epoch and ends with the weights of an
uninterrupted run. Every worker restores the chief's checkpoint at start,
so the experiment folder must be on storage shared by all hosts; after a
restore every worker holds the chief's BN statistics. A worker that dies
leaves the others blocked in a collective op: restart all of them.
`train_loop` ends with a `barrier`, so that no worker reads the checkpoint
the chief is still writing.
"""

import sys

import keras
import tensorflow as tf

from patchup_tf.errors import UsageError

__all__ = ["train_loop", "shard_by_data", "barrier", "num_workers"]


def num_workers(strategy):
    """Number of hosts (workers) `strategy` spans; 1 for single-host strategies."""
    extended = getattr(strategy, "extended", None)
    return int(getattr(extended, "_num_workers", 1) or 1)


def shard_by_data(dataset):
    """`dataset` with the DATA auto-shard policy (see the module docstring)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options)


def barrier(strategy):
    """Blocks until every worker of `strategy` reaches this call (an all-reduce)."""
    if num_workers(strategy) <= 1:
        return

    @tf.function
    def all_reduce():
        ones = strategy.run(lambda: tf.ones([], tf.float32))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)

    float(all_reduce())


def check_global_batch(batch, replicas, flag=None):
    """A global batch of `batch` (None: unknown) splits evenly across
    `replicas`; else a `ValueError`, or a `UsageError` naming `flag` (the
    trainer's `--batch_size`) with a batch size that does."""
    if batch is None or batch % replicas == 0:
        return
    if flag is not None:
        raise UsageError(
            f"{flag} {batch} is the global batch and must be a multiple of the "
            f"{replicas} replicas; use e.g. {flag} {replicas * max(1, batch // replicas)}")
    raise ValueError(
        f"The global batch size {batch} does not split evenly across "
        f"{replicas} replicas; give a --batch_size that is a multiple of "
        f"{replicas} (each replica then trains on batch/{replicas})."
    )


def _check_batch(dataset, strategy):
    spec = dataset.element_spec
    images = spec[0] if isinstance(spec, (tuple, list)) else spec
    check_global_batch(images.shape[0] if images.shape.rank else None,
                       strategy.num_replicas_in_sync)


def _make_step(model, strategy):
    def step(iterator):
        per_replica = strategy.run(model.train_step, args=(next(iterator),))
        # The logs are running means over this replica's batches of the
        # epoch; with equal per-replica batches their mean is the global one.
        return {
            name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
            for name, value in per_replica.items()
        }

    # No XLA: the plans' Beta draws have no XLA kernel (see MixingModel.compile).
    return tf.function(step, jit_compile=False)


def train_loop(model, dataset, *, epochs, initial_epoch=0, steps_per_epoch, lr_at=None,
               callbacks=(), strategy=None, verbose=1):
    """Trains `model` as `model.fit` would, driving `strategy.run` by hand.

    Args:
        model: a compiled `MixingModel` (or any `keras.Model` whose
            `train_step(data)` returns a dict of scalar logs) built under
            `strategy.scope()`.
        dataset: a `tf.data.Dataset` of *global* batches with at least
            `(epochs - initial_epoch) * steps_per_epoch` elements (e.g.
            `patchup_tf.app.data.train_epochs(datasets, initial_epoch)`).
        epochs: index of the epoch to stop before, as `fit(epochs=...)`.
        initial_epoch: first epoch to run (0-based), as in `fit`.
        steps_per_epoch: steps (global batches) per epoch.
        lr_at: optional `epoch -> learning rate`; assigned to
            `model.optimizer.learning_rate` at each epoch start.
        callbacks: Keras callbacks; they receive `on_train_begin/end`,
            `on_epoch_begin/end` and `on_train_batch_begin/end` with the
            logs (`loss`, `accuracy`, ...) averaged across replicas, plus
            `learning_rate` at the epoch end. `model.stop_training = True`
            stops after the current step.
        strategy: a `tf.distribute.Strategy`; default: the current one.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.

    Returns:
        The `keras.callbacks.History` of the run.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if steps_per_epoch is None or steps_per_epoch < 1:
        raise ValueError(f"`steps_per_epoch` must be >= 1, got {steps_per_epoch!r}")
    _check_batch(dataset, strategy)
    distributed = strategy.experimental_distribute_dataset(shard_by_data(dataset))
    iterator = iter(distributed)
    step = _make_step(model, strategy)
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=True, add_progbar=False, model=model,
        epochs=epochs, steps=steps_per_epoch, verbose=verbose,
    )
    model.stop_training = False
    logs = {}
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        logs = _run_epoch(model, step, iterator, callback_list, epoch, epochs=epochs,
                          steps_per_epoch=steps_per_epoch, lr_at=lr_at, verbose=verbose)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    # The chief may still be writing this epoch's files; wait for it.
    barrier(strategy)
    return model.history


def _run_epoch(model, step, iterator, callback_list, epoch, *, epochs, steps_per_epoch,
               lr_at, verbose):
    """Runs epoch `epoch` of `train_loop`: its learning rate, its steps (until
    `model.stop_training`) and their callbacks; returns the last step's logs.
    """
    model.reset_metrics()
    if lr_at is not None:
        model.optimizer.learning_rate.assign(float(lr_at(epoch)))
    callback_list.on_epoch_begin(epoch)
    if verbose:
        print(f"Epoch {epoch + 1}/{epochs}", file=sys.stdout, flush=True)
    progbar = keras.utils.Progbar(steps_per_epoch, verbose=verbose, unit_name="step")
    for batch in range(steps_per_epoch):
        callback_list.on_train_batch_begin(batch)
        logs = {name: float(value) for name, value in step(iterator).items()}
        callback_list.on_train_batch_end(batch, logs)
        if model.stop_training:
            break
        progbar.update(batch + 1, list(logs.items()), finalize=batch + 1 == steps_per_epoch)
    epoch_logs = dict(logs)
    epoch_logs["learning_rate"] = float(model.optimizer.learning_rate.numpy())
    callback_list.on_epoch_end(epoch, epoch_logs)
    return logs
