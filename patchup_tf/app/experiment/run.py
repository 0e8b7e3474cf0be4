"""One experiment: data, model, training, checkpoints and reports in a folder.

`run(config)` is `patchup-train` (`scripts/train.py`), once its flags are
checked (`patchup_tf.app.experiment.config.RunConfig`). The experiment folder (under `--root_dir`,
named from the flags as the reference names it) holds:

* `flags.json`: every flag, resolved (method options, schedule, precision);
* `log.txt`: the flags and one line per epoch, as the reference's;
* `log.csv`, `log.json`, `log.pkl`: per epoch lr, train loss/accuracy,
  valid and test loss/top-1/top-5/error, seconds;
* `tensorboard/`: TensorBoard events; `loss.png`, `accuracy.png`: curves;
* `checkpoints/`: a `tf.train.CheckpointManager` folder, the resume point:
  after the last completed epoch, the model, optimizer, progress, history
  and best weights (`patchup_tf.app.experiment.checkpoints`); `best.keras`: the weights of
  the strictly best validation epoch; `last.keras` with `--checkpoint True`;
* `report.json`: validation/test metrics of the best weights (plus the
  deformed sets and FGSM when asked); `saved_model/`: its SavedModel.

Every file is written atomically (temporary file, then rename). The
checkpoint is committed first at each epoch end and the other files are
written from it (again on resume), so a run killed at any moment restarts
with the same command from its last completed epoch and ends with the same
log and weights as an uninterrupted run (bitwise with `--deterministic
True`, the default).
"""

import json
import math
import os
import time

import keras
import tensorflow as tf

from patchup_tf.app import data as data_lib
from patchup_tf import models
from patchup_tf.app import precision as precision_lib
from patchup_tf.attachment import attach
from patchup_tf.errors import NonFiniteLoss, UsageError
from patchup_tf.app.evaluation import evaluate_affine_sets, evaluate_classifier, fgsm_sweep
from patchup_tf.app.evaluation.report import EvaluationError, affine_set_paths
from patchup_tf.app.experiment.checkpoints import RunCheckpoint
from patchup_tf.app.experiment.config import differences
from patchup_tf.app.experiment.distributed import check_global_batch, train_loop
from patchup_tf.app.experiment.logs import ExperimentLog
from patchup_tf.app import folder as folder_lib
from patchup_tf.app.folder import FLAGS_FILE, LEGACY_STATE, has_checkpoint
from patchup_tf.files import export_saved_model, remove_stale_temporaries, write_text
from patchup_tf.models.applications import keras_application
from patchup_tf.app.constants import PRECISIONS
from patchup_tf.rules import application_name
from patchup_tf.training import StopMixing, StopOnNonFinite, paper_optimizer, step_lr


# -------------------------------------------------------------------- run
def run(config):
    """Trains, evaluates and reports one experiment; returns the report dict.

    `config`: a checked `RunConfig`. Raises `UsageError` (bad data, folder
    or batch size; nothing half-written) or `NonFiniteLoss`.
    """
    args = config.args
    precision_lib.warn_if_emulated(config.precision)  # an explicit bf16, before any work
    strategy = set_up(args)
    datasets, affine_sets = load_data(args)
    config = config._replace(data=describe_data(args, datasets),
                             precision=config.precision or choose_precision(
                                 args, config.experiment_dir, datasets.num_classes))
    keras.mixed_precision.set_global_policy(config.precision)
    resuming = open_folder(config)
    with strategy.scope():
        model = build_model(config, datasets.num_classes, datasets.image_shape)
    state, meta = restore(config, model, resuming)
    epoch_end = EpochEnd(model, datasets, config, meta, state)
    if meta["epoch"] + 1 < config.epochs:
        fit(config, model, datasets, strategy, epoch_end)
    return final_report(config, model, datasets, epoch_end.meta, affine_sets, state)


def set_up(args):
    """Determinism, the distribution strategy and the seeds; returns the strategy."""
    if args.deterministic:  # before the strategy: it may start the runtime
        configure_determinism()
    # First: MultiWorkerMirroredStrategy must configure the runtime before any op runs.
    strategy = make_strategy(args.strategy)
    check_global_batch(args.batch_size, strategy.num_replicas_in_sync, flag="--batch_size")
    keras.utils.set_random_seed(args.seed)
    return strategy


def load_data(args):
    """`(datasets, affine_set_paths)`; a data problem is a `UsageError`."""
    try:
        datasets = data_lib.make_datasets(
            args.dataset, args.data_dir, batch_size=args.batch_size,
            labels_per_class=args.labels_per_class,
            valid_labels_per_class=args.valid_labels_per_class, seed=args.seed,
            image_size=args.image_size, skip_bad_images=args.skip_bad_images,
        )
        affine_sets = affine_set_paths(args.affine_path, args.dataset) if args.affine_test else []
    except (ValueError, EvaluationError) as e:  # DataError included
        raise UsageError(str(e)) from None
    return datasets, affine_sets


def describe_data(args, datasets):
    """What flags.json and report.json record of the data: the class names (in
    label order), the normalisation (0-255 units) evaluation must reuse, the
    image shape and an image folder's skipped files. A paper architecture
    given images other than 32x32 is a `UsageError`."""
    if application_name(args.arch) is None and tuple(datasets.image_shape[:2]) != (32, 32):
        h, w = datasets.image_shape[:2]
        raise UsageError(f"the images in {args.data_dir} are {h}x{w} but --arch {args.arch} "
                         "takes 32x32; pass --image_size 32, or use a keras:<Name> arch")
    if datasets.skipped:
        print(f"skipped {len(datasets.skipped)} unreadable images (listed in {FLAGS_FILE} "
              f"under data.skipped_images), e.g. {datasets.skipped[0]}")
    return {"class_names": list(datasets.class_names), "mean": list(datasets.mean),
            "std": list(datasets.std), "image_shape": list(datasets.image_shape),
            "skipped_images": list(datasets.skipped)}


def open_folder(config):
    """Creates (or checks, to resume) the experiment folder; returns whether
    it holds a checkpoint to resume from."""
    exp_dir = config.experiment_dir
    resuming = has_checkpoint(exp_dir)
    if resuming:
        check_same_run(exp_dir, config)
    elif os.path.exists(os.path.join(exp_dir, LEGACY_STATE)):
        raise UsageError(
            f"{exp_dir} was written by an older version of patchup_tf (its resume point is "
            f"{LEGACY_STATE}) and cannot be resumed by this one; start a new experiment "
            "folder with another --root_dir or --job_id")
    try:
        os.makedirs(exp_dir, exist_ok=True)
    except OSError as e:  # unwritable --root_dir, a name too long for the file system
        raise UsageError(f"cannot create the experiment folder {exp_dir}: "
                         f"{e.strerror or e}") from None
    if is_chief():
        remove_stale_temporaries(exp_dir)
    return resuming


def check_same_run(exp_dir, config):
    """Raises `UsageError` if `exp_dir` holds a run made with other settings."""
    try:
        differ = differences(folder_lib.read_flags(exp_dir), config.to_json())
    except (OSError, ValueError, AttributeError):
        return  # Older or foreign folder: the checkpoint's own checks apply.
    if differ:
        raise UsageError(
            f"{exp_dir} holds a run with other settings ({', '.join(differ)} differ); "
            f"resume it with its own command (see its {FLAGS_FILE}) or start a new one with "
            "another --job_id, --add_name or --root_dir")


def build_model(config, num_classes, image_shape):
    """The compiled model of the run (a paper arch, or keras:<Name> attached)."""
    args = config.args
    name = application_name(args.arch)
    if name is not None:  # any keras.applications network, method attached
        network = keras_application(name, tuple(image_shape), num_classes,
                                    weights=args.weights, bn_momentum=0.9)
        model = attach(network, config.method, seed=args.seed, **config.method_options)
    else:
        model = models.build(args.arch, num_classes, config.method, seed=args.seed,
                             **config.method_options)
    optimizer = paper_optimizer(args.learning_rate, args.momentum, args.decay)
    model.compile(optimizer=optimizer, jit_compile=bool(args.jit_compile))
    model.optimizer.build(model.trainable_variables)
    return model


def restore(config, model, resuming):
    """`(RunCheckpoint, meta)`: the resume point restored, or a new folder's
    first files written."""
    exp_dir, chief = config.experiment_dir, is_chief()
    state = RunCheckpoint(model, exp_dir, chief)  # the chief also cleans a killed save up
    meta = {"epoch": -1, "best_valid_top1": -math.inf, "best_epoch": None, "history": []}
    if resuming:
        try:
            meta = state.restore()
        except (ValueError, OSError) as e:
            raise UsageError(f"cannot resume from {state.directory}: {e}") from None
        print(f"resuming {exp_dir} after epoch {meta['epoch'] + 1}")
        if chief:  # a kill may have cut the files after the commit short
            ExperimentLog(exp_dir, vars(config.args)).files(
                model, meta, new_best=meta["best_epoch"] == meta["epoch"])
    elif chief:
        folder_lib.write_flags(exp_dir, config.to_json())
        write_text(os.path.join(exp_dir, folder_lib.LOG_TEXT),
                   json.dumps(vars(config.args), sort_keys=True) + "\n")
    return state, meta


def fit(config, model, datasets, strategy, epoch_end):
    """Trains from the epoch after the last completed one; raises
    `NonFiniteLoss` if the loss diverged (that epoch is not committed)."""
    args, exp_dir = config.args, config.experiment_dir
    train_ds = data_lib.train_epochs(datasets, first_epoch=epoch_end.meta["epoch"] + 1)
    lr_at = step_lr(args.learning_rate, config.schedule, config.step_factors)
    guard = StopOnNonFinite()
    callbacks = [guard, keras.callbacks.LearningRateScheduler(lr_at), epoch_end]
    if epoch_end.chief:
        callbacks.append(keras.callbacks.TensorBoard(folder_lib.tensorboard_path(exp_dir),
                                                     write_graph=False))
    if args.mix_off_epoch is not None:  # plain steps from this 0-based epoch on
        callbacks.insert(0, StopMixing(args.mix_off_epoch))
    first = epoch_end.meta["epoch"] + 1
    try:
        if args.strategy == "multi_worker":  # fit fails there (keras-team/keras#20585)
            train_loop(model, train_ds, epochs=config.epochs, initial_epoch=first,
                       steps_per_epoch=datasets.steps_per_epoch, lr_at=lr_at,
                       callbacks=callbacks, strategy=strategy,
                       verbose=args.verbose if epoch_end.chief else 0)
        else:
            model.fit(train_ds, epochs=config.epochs, initial_epoch=first,
                      steps_per_epoch=datasets.steps_per_epoch, callbacks=callbacks,
                      verbose=args.verbose, shuffle=False)  # the stream is shuffled (resumable)
    except tf.errors.UnimplementedError as e:  # e.g. a GPU kernel with no deterministic form
        if not args.deterministic:
            raise
        raise UsageError(
            f"{e.message.splitlines()[0]}; this device has no deterministic kernel for an op "
            "of this run: run it with --deterministic False (the last completed epoch's "
            "checkpoint is kept)") from None
    if guard.stopped_at is not None:
        done = epoch_end.meta["epoch"] + 1  # epochs completed
        kept = (f"the last good checkpoint, {epoch_end.state.latest()} (after epoch {done}), "
                "is kept" if done > 0 else "no epoch completed, so no checkpoint was written")
        epoch, step = guard.stopped_at
        raise NonFiniteLoss(f"the training loss became NaN at epoch {epoch}, step {step}; "
                            f"stopped; {kept}. Lower --learning_rate.")


class EpochEnd(keras.callbacks.Callback):
    """At each epoch end: evaluate, commit the checkpoint, then write the files.

    The commit comes first (every worker saves; see
    `patchup_tf.app.experiment.checkpoints`); the files are written from it, and
    again on resume if a kill cut them short. An epoch whose loss is not
    finite is not committed (`StopOnNonFinite` has stopped the run).
    """

    def __init__(self, model, datasets, config, meta, state):
        super().__init__()
        self._model_ref, self.datasets, self.meta, self.state = model, datasets, meta, state
        self.chief = is_chief()
        self.log = ExperimentLog(config.experiment_dir, vars(config.args))
        self._start = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        model, logs = self._model_ref, logs or {}
        if not math.isfinite(float(logs.get("loss", 0.0))):
            return  # keep the last good checkpoint untouched
        valid = evaluate_classifier(model, self.datasets.valid)
        test = evaluate_classifier(model, self.datasets.test)
        row = {
            "epoch": epoch + 1, "lr": float(model.optimizer.learning_rate.numpy()),
            "train_loss": float(logs.get("loss", float("nan"))),
            "train_accuracy": 100.0 * float(logs.get("accuracy", float("nan"))),
            **{f"valid_{k}": float(v) for k, v in valid.items()},
            **{f"test_{k}": float(v) for k, v in test.items()},
            "seconds": time.time() - self._start,
        }
        meta = {**self.meta, "history": [*self.meta["history"], row], "epoch": epoch}
        new_best = row["valid_top1"] > meta["best_valid_top1"]
        if new_best:
            meta["best_valid_top1"], meta["best_epoch"] = row["valid_top1"], epoch
        self.state.save(meta, new_best)
        self.meta = meta
        if self.chief:
            self.log.files(model, meta, new_best)
            self.log.epoch(epoch, row)


def final_report(config, model, datasets, meta, affine_sets, state):
    """Evaluates the best weights; writes report.json and the SavedModel."""
    args, exp_dir = config.args, config.experiment_dir
    # The best weights of the chief's checkpoint (every worker reads the same).
    meta = state.restore_best(model) or meta
    report = {
        "experiment_dir": exp_dir,
        "best_epoch": None if meta["best_epoch"] is None else meta["best_epoch"] + 1,
        "epochs_completed": meta["epoch"] + 1,
        "valid": evaluate_classifier(model, datasets.valid),
        "test": evaluate_classifier(model, datasets.test),
        "data": config.data,
    }
    if affine_sets:
        report["affine"] = evaluate_affine_sets(model, affine_sets, datasets.mean, datasets.std,
                                                batch_size=args.batch_size)
    if args.fsgm_attack:
        unshuffled = datasets.test.unbatch().batch(100)
        report["fgsm"] = fgsm_sweep(model, unshuffled)
    if is_chief():
        folder_lib.write_report(exp_dir, report)
        export_saved_model(folder_lib.saved_model_path(exp_dir), model)
    print_report(report)
    return report


def print_report(report):
    v, t = report["valid"], report["test"]
    print(f"best epoch {report['best_epoch']}: valid top1 {v['top1']:.2f} | test top1 "
          f"{t['top1']:.2f} top5 {t['top5']:.2f} error {t['error']:.2f} loss {t['loss']:.4f}")
    for row in report.get("affine", []):
        print(f"  deformed {row['name']:>12}: top1 {row['top1']:.2f} error {row['error']:.2f}")
    for row in report.get("fgsm", []):
        print(f"  fgsm eps {row['eps']:.2f}: accuracy {row['accuracy']:.2f} loss {row['loss']:.4f}")
    print(f"experiment folder: {report['experiment_dir']}")


# ---------------------------------------------------------------- helpers
def choose_precision(args, exp_dir, num_classes):
    """The run's Keras dtype policy name.

    `--mixed_precision True` is `mixed_bfloat16`; an explicit `--precision`
    is kept; `auto` is `patchup_tf.app.precision.resolve_precision`'s evidence
    (GPU capability, or a cached one-step probe of this arch at this batch
    size on this CPU). A resumed `auto` run keeps the precision its
    `flags.json` recorded, so one run never changes precision midway; a
    multi-worker run never probes (every host must choose alike).
    """
    if args.mixed_precision:
        return "mixed_bfloat16"
    if args.precision != "auto":
        return args.precision
    try:
        recorded = folder_lib.read_flags(exp_dir).get("precision")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if has_checkpoint(exp_dir) and recorded in PRECISIONS:
        print(f"precision auto: {recorded} (as recorded in {exp_dir}/{FLAGS_FILE})")
        return recorded
    size = args.image_size or 32
    return precision_lib.resolve_precision(
        "auto", arch=args.arch, batch_size=args.batch_size, input_shape=(size, size, 3),
        num_classes=num_classes, allow_probe=args.strategy != "multi_worker")


def configure_determinism():
    """`--deterministic True`: TensorFlow's deterministic kernels.

    `enable_op_determinism` selects kernels whose results do not depend on
    thread timing (and forces tf.data's deterministic order, which the
    input pipeline asks for anyway); with the seeds `run` sets and
    `MixingModel`'s stateless plans, a command repeated on the same machine
    and software gives the same weights and log, bit for bit.
    """
    tf.config.experimental.enable_op_determinism()


def make_strategy(name):

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief():
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task", {})
    return task.get("type", "chief") == "chief" or (
        task.get("type") == "worker" and task.get("index", 0) == 0
        and "chief" not in tf_config.get("cluster", {})
    )


# ----------------------------------------------------------------- config
