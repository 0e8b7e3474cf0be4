"""One experiment: data, model, training, checkpoints and reports in a folder.

`run(argv)` is `scripts/train.py`. The experiment folder (under `--root_dir`,
named from the flags as the reference names it) holds:

* `flags.json`: every flag, resolved (method options, schedule, precision);
* `log.txt`: the flags and one line per epoch, as the reference's;
* `log.csv`, `log.json`, `log.pkl`: per epoch lr, train loss/accuracy,
  valid and test loss/top-1/top-5/error, seconds;
* `tensorboard/`: TensorBoard events; `loss.png`, `accuracy.png`: curves;
* `checkpoints/`: a `tf.train.CheckpointManager` folder, the resume point:
  after the last completed epoch, the model, optimizer, progress, history
  and best weights (`patchup_tf.checkpoints`); `best.keras`: the weights of
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

import csv
import json
import math
import os
import pickle
import sys
import time

import keras
import tensorflow as tf

from patchup_tf import data as data_lib
from patchup_tf import flags as flags_lib
from patchup_tf.checkpoints import LEGACY_STATE, RunCheckpoint, has_checkpoint
from patchup_tf import models
from patchup_tf import precision as precision_lib
from patchup_tf.attach import attach
from patchup_tf.distributed import train_loop
from patchup_tf.evaluation import evaluate_affine_sets, evaluate_classifier, fgsm_sweep
from patchup_tf.evaluation.report import EvaluationError, affine_set_paths
from patchup_tf.methods import Method
from patchup_tf.models.applications import keras_application
from patchup_tf.plots import plot_curves
from patchup_tf.training import recipe, step_lr
from patchup_tf.files import (
    EXIT_BAD_INPUT,
    EXIT_NAN,
    atomic_write,
    fail,
    jsonable,
    remove_stale_temporaries,
    save_keras,
    export_saved_model,
    write_json,
    write_text,
)


# Every log row and the report count epochs from 1, as Keras prints them
# ("Epoch 3/5" is the row with "epoch": 3); the checkpoint's `meta` keeps
# Keras' 0-based index of the last completed epoch (-1: none yet).
LOG_FIELDS = (
    "epoch", "lr", "train_loss", "train_accuracy", "valid_loss", "valid_top1",
    "valid_top5", "valid_error", "test_loss", "test_top1", "test_top5", "test_error",
    "seconds",
)


# ---------------------------------------------------------------- helpers
def choose_precision(args, exp_dir, num_classes):
    """The run's Keras dtype policy name.

    `--mixed_precision True` is `mixed_bfloat16`; an explicit `--precision`
    is kept; `auto` is `patchup_tf.precision.resolve_precision`'s evidence
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
        with open(os.path.join(exp_dir, "flags.json")) as f:
            recorded = json.load(f).get("precision")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if has_checkpoint(exp_dir) and recorded in precision_lib.PRECISIONS:
        print(f"precision auto: {recorded} (as recorded in {exp_dir}/flags.json)")
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
def resolve(argv):
    """Parses and checks the flags; returns `(args, config)` or exits 2."""
    parser = flags_lib.build_parser()
    args = parser.parse_args(argv)
    try:
        args, method, options, epochs, schedule, factors, name = flags_lib.resolve(args)
        Method(method, **options)
        num_classes = data_lib.num_classes(args.dataset, args.data_dir)
    except ValueError as e:  # DataError included
        parser.exit(EXIT_BAD_INPUT, f"error: {e}\n")
    config = {
        "flags": vars(args), "method": method, "method_options": options,
        "epochs": epochs, "schedule": schedule, "step_factors": factors,
        "experiment_dir": os.path.join(args.root_dir, name), "argv": list(argv),
    }
    config["precision"] = choose_precision(args, config["experiment_dir"], num_classes)
    return args, config


# -------------------------------------------------------------------- run
def run(argv=None):
    """Trains, evaluates and reports one experiment; returns the report dict."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, config = resolve(argv)


    if args.deterministic:  # before the strategy: it may start the runtime
        configure_determinism()
    # First: MultiWorkerMirroredStrategy must configure the runtime before any op runs.
    strategy = make_strategy(args.strategy)
    replicas = strategy.num_replicas_in_sync
    if args.batch_size % replicas:
        fail(f"--batch_size {args.batch_size} is the global batch and must be a multiple of "
             f"the {replicas} replicas; use e.g. --batch_size {replicas * max(1, args.batch_size // replicas)}")
    keras.utils.set_random_seed(args.seed)
    try:
        datasets = data_lib.make_datasets(
            args.dataset, args.data_dir, batch_size=args.batch_size,
            labels_per_class=args.labels_per_class,
            valid_labels_per_class=args.valid_labels_per_class, seed=args.seed,
            image_size=args.image_size, skip_bad_images=args.skip_bad_images,
        )
    except ValueError as e:  # DataError included
        fail(str(e))
    config["data"] = describe_data(args, datasets)
    affine_sets = _find_affine_sets(args) if args.affine_test else []

    keras.mixed_precision.set_global_policy(config["precision"])
    exp_dir = config["experiment_dir"]
    chief = is_chief()
    resuming = has_checkpoint(exp_dir)
    if resuming:
        _check_same_run(exp_dir, config)
    elif os.path.exists(os.path.join(exp_dir, LEGACY_STATE)):
        fail(f"{exp_dir} was written by an older version of patchup_tf (its resume point is "
             f"{LEGACY_STATE}) and cannot be resumed by this one; start a new experiment "
             "folder with another --root_dir or --job_id")
    try:
        os.makedirs(exp_dir, exist_ok=True)
    except OSError as e:  # unwritable --root_dir, a name too long for the file system
        fail(f"cannot create the experiment folder {exp_dir}: {e.strerror or e}")
    if chief:
        remove_stale_temporaries(exp_dir)
    with strategy.scope():
        model = _build_model(args, config, datasets.num_classes, datasets.image_shape)
    state = RunCheckpoint(model, exp_dir, chief)  # the chief also cleans a killed save up
    meta = {"epoch": -1, "best_valid_top1": -math.inf, "best_epoch": None, "history": []}
    if resuming:
        try:
            meta = state.restore()
        except (ValueError, OSError) as e:
            fail(f"cannot resume from {state.directory}: {e}")
        print(f"resuming {exp_dir} after epoch {meta['epoch'] + 1}")
    elif chief:
        write_json(os.path.join(exp_dir, "flags.json"), config)
        write_text(os.path.join(exp_dir, "log.txt"), json.dumps(config["flags"], sort_keys=True) + "\n")

    logger = EpochLogger(model, datasets, config, exp_dir, meta, evaluate_classifier,
                                   chief, state)
    if resuming and chief:  # a kill may have cut the files after the commit short
        logger.write_files(meta, new_best=meta["best_epoch"] == meta["epoch"])
    if meta["epoch"] + 1 < config["epochs"]:
        train_ds = data_lib.train_epochs(datasets, first_epoch=meta["epoch"] + 1)
        lr_at = step_lr(args.learning_rate, config["schedule"], config["step_factors"])
        callbacks = [
            keras.callbacks.LearningRateScheduler(lr_at),
            logger,
            keras.callbacks.TensorBoard(os.path.join(exp_dir, "tensorboard"), write_graph=False)
            if chief else keras.callbacks.Callback(),
        ]
        if getattr(args, "mix_off_epoch", None) is not None:
            # Plain steps from this 0-based epoch on (also after a resume).
            from patchup_tf.training import StopMixing
            callbacks.insert(0, StopMixing(args.mix_off_epoch))
        try:
            if args.strategy == "multi_worker":  # fit fails there (keras-team/keras#20585)
                train_loop(model, train_ds, epochs=config["epochs"],
                           initial_epoch=meta["epoch"] + 1,
                           steps_per_epoch=datasets.steps_per_epoch, lr_at=lr_at,
                           callbacks=callbacks, strategy=strategy,
                           verbose=args.verbose if chief else 0)
            else:
                model.fit(
                    train_ds, epochs=config["epochs"], initial_epoch=meta["epoch"] + 1,
                    steps_per_epoch=datasets.steps_per_epoch, callbacks=callbacks,
                    verbose=args.verbose, shuffle=False,  # the stream is shuffled (and resumable)
                )
        except tf.errors.UnimplementedError as e:  # e.g. a GPU kernel with no deterministic form
            if not args.deterministic:
                raise
            fail(f"{e.message.splitlines()[0]}; this device has no deterministic kernel for "
                 "an op of this run: run it with --deterministic False (the last completed "
                 "epoch's checkpoint is kept)")
        if logger.nan_at is not None:
            done = logger.meta["epoch"] + 1  # epochs completed
            kept = (f"the last good checkpoint, {state.latest()} (after epoch {done}), is kept"
                    if done > 0 else "no epoch completed, so no checkpoint was written")
            fail(f"the training loss became NaN at epoch {logger.nan_at[0]}, step "
                 f"{logger.nan_at[1]}; stopped; {kept}. Lower --learning_rate.", EXIT_NAN)
    report = _final_report(args, config, model, datasets, exp_dir, logger.meta,
                           evaluate_classifier, affine_sets, chief, state)
    return report


# What must match for a folder's checkpoint to be resumed by this command (the
# folder name leaves out e.g. --labels_per_class).
_RUN_KEYS = ("method", "epochs", "schedule", "step_factors")
_RUN_FLAGS = ("dataset", "arch", "labels_per_class", "valid_labels_per_class", "batch_size",
              "learning_rate", "momentum", "decay", "seed")


def _check_same_run(exp_dir, config):
    """Exits 2 if `exp_dir` holds a run made with other settings than `config`."""
    try:
        with open(os.path.join(exp_dir, "flags.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return  # Older or foreign folder: the checkpoint's own checks apply.
    now = json.loads(json.dumps(config, default=jsonable))
    differ = [k for k in _RUN_KEYS if saved.get(k) != now.get(k)]

    def options(c):  # unset options are the paper's
        resolved = {**flags_lib.PAPER_DEFAULTS.get(c.get("method"), {}),
                    **(c.get("method_options") or {})}
        return json.loads(json.dumps(resolved, default=jsonable))

    if options(saved) != options(now):
        differ.append("method options")
    if "data" in saved and saved["data"] != now.get("data"):  # the folder's files changed
        differ.append("the data (class names, mean/std or skipped images)")
    differ += [f"--{k}" for k in _RUN_FLAGS
               if saved.get("flags", {}).get(k) != now["flags"].get(k)]
    if differ:
        fail(f"{exp_dir} holds a run with other settings ({', '.join(differ)} differ); "
             "resume it with its own command (see its flags.json) or start a new one with "
             "another --job_id, --add_name or --root_dir")


def describe_data(args, datasets):
    """What flags.json and report.json record of the data: the class names (in
    label order), the normalisation (0-255 units) evaluation must reuse, the
    image shape and an image folder's skipped files. Exits 2 if a paper
    architecture would get images other than 32x32."""
    if not args.arch.startswith("keras:") and tuple(datasets.image_shape[:2]) != (32, 32):
        h, w = datasets.image_shape[:2]
        fail(f"the images in {args.data_dir} are {h}x{w} but --arch {args.arch} takes 32x32; "
             "pass --image_size 32, or use a keras:<Name> arch")
    if datasets.skipped:
        print(f"skipped {len(datasets.skipped)} unreadable images (listed in flags.json "
              f"under data.skipped_images), e.g. {datasets.skipped[0]}")
    return {"class_names": list(datasets.class_names), "mean": list(datasets.mean),
            "std": list(datasets.std), "image_shape": list(datasets.image_shape),
            "skipped_images": list(datasets.skipped)}


def _build_model(args, config, num_classes, image_shape):
    if args.arch.startswith("keras:"):  # any keras.applications network, method attached
        network = keras_application(args.arch[len("keras:"):], tuple(image_shape), num_classes,
                                    weights=args.weights, bn_momentum=0.9)
        model = attach(network, config["method"], seed=args.seed, **config["method_options"])
    else:
        model = models.build(args.arch, num_classes, config["method"], seed=args.seed,
                             **config["method_options"])
    optimizer, _ = recipe(args.learning_rate, args.momentum, args.decay,
                          config["schedule"], config["step_factors"])
    model.compile(optimizer=optimizer, jit_compile=bool(args.jit_compile))
    model.optimizer.build(model.trainable_variables)
    return model


def _find_affine_sets(args):
    try:
        return affine_set_paths(args.affine_path, args.dataset)
    except EvaluationError as e:
        fail(str(e))


class EpochLogger(keras.callbacks.Callback):
    """Per-epoch evaluation, logs, best and resume checkpoints, NaN guard."""

    def __init__(self, model, datasets, config, exp_dir, meta, evaluate, chief, state):
        super().__init__()
        self._model_ref, self.datasets, self.config = model, datasets, config
        self.exp_dir, self.meta, self.evaluate, self.chief = exp_dir, meta, evaluate, chief
        self.state = state  # RunCheckpoint
        self.nan_at = None
        self._writers = {}
        self._start = time.time()
        self._epoch = meta["epoch"] + 1  # Keras' 0-based index of the running epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_at = (self._epoch + 1, batch)  # 1-based, as Keras prints it
            self._model_ref.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_at is not None:
            return  # keep the last good checkpoint untouched
        model, logs = self._model_ref, logs or {}
        valid = self.evaluate(model, self.datasets.valid)
        test = self.evaluate(model, self.datasets.test)
        row = {
            "epoch": epoch + 1, "lr": float(model.optimizer.learning_rate.numpy()),
            "train_loss": float(logs.get("loss", float("nan"))),
            "train_accuracy": 100.0 * float(logs.get("accuracy", float("nan"))),
            **{f"valid_{k}": float(v) for k, v in valid.items()},
            **{f"test_{k}": float(v) for k, v in test.items()},
            "seconds": time.time() - self._start,
        }
        meta = dict(self.meta)
        meta["history"] = list(meta["history"]) + [row]
        meta["epoch"] = epoch
        new_best = row["valid_top1"] > meta["best_valid_top1"]
        if new_best:
            meta["best_valid_top1"], meta["best_epoch"] = row["valid_top1"], epoch
        # The commit comes first (every worker saves; see patchup_tf.checkpoints);
        # the files below are written from it, again on resume if cut short.
        self.state.save(meta, new_best)
        self.meta = meta
        if self.chief:
            self.write_files(meta, new_best)
            self.report_epoch(epoch, row)

    def report_epoch(self, epoch, row):
        """Validation and test figures on the console and in TensorBoard
        (`tensorboard/validation`, `tensorboard/test`, beside Keras' `train`;
        their `epoch_loss` is the cross-entropy on the clean labels)."""
        verbose = self.config["flags"].get("verbose", 1)
        if verbose:
            # After verbose 1's progress bar, which ends without a newline.
            print(f"{chr(10) if verbose == 1 else ''}Epoch {epoch + 1}: valid top1 {row['valid_top1']:.2f} CE "
                  f"{row['valid_loss']:.4f} | test top1 {row['test_top1']:.2f} CE "
                  f"{row['test_loss']:.4f}", flush=True)
        for split in ("valid", "test"):
            folder = "validation" if split == "valid" else split
            writer = self._writers.get(split) or tf.summary.create_file_writer(
                os.path.join(self.exp_dir, "tensorboard", folder))
            self._writers[split] = writer
            with writer.as_default():
                tf.summary.scalar("epoch_loss", row[f"{split}_loss"], step=epoch)
                tf.summary.scalar("epoch_accuracy", row[f"{split}_top1"] / 100.0, step=epoch)
                tf.summary.scalar("epoch_top5", row[f"{split}_top5"] / 100.0, step=epoch)
            writer.flush()

    def write_files(self, meta, new_best):
        """best.keras (if `new_best`), last.keras and the logs, as of `meta`'s
        epoch; the model holds that epoch's weights."""
        model = self._model_ref
        if new_best:
            save_keras(os.path.join(self.exp_dir, "best.keras"), model)
        if self.config["flags"].get("checkpoint") and meta["epoch"] >= 0:
            save_keras(os.path.join(self.exp_dir, "last.keras"), model)
        write_logs(self.exp_dir, meta["history"], self.config)


def write_logs(exp_dir, history, config):
    """log.txt, log.csv, log.json, log.pkl and the curves, from the whole history."""
    lines = [json.dumps(config["flags"], sort_keys=True)]
    for r in history:
        lines.append(
            f"epoch {r['epoch']:4d} lr {r['lr']:.6f} train loss {r['train_loss']:.4f} "
            f"acc {r['train_accuracy']:.2f} | valid loss {r['valid_loss']:.4f} top1 "
            f"{r['valid_top1']:.2f} error {r['valid_error']:.2f} | test loss "
            f"{r['test_loss']:.4f} top1 {r['test_top1']:.2f} error {r['test_error']:.2f} "
            f"| {r['seconds']:.1f}s"
        )
    write_text(os.path.join(exp_dir, "log.txt"), "\n".join(lines) + "\n")

    def write_csv(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)

    atomic_write(os.path.join(exp_dir, "log.csv"), write_csv)
    write_json(os.path.join(exp_dir, "log.json"), history)
    columns = {k: [r.get(k) for r in history] for k in LOG_FIELDS}

    def write_pickle(tmp):
        with open(tmp, "wb") as f:
            pickle.dump(columns, f)

    atomic_write(os.path.join(exp_dir, "log.pkl"), write_pickle)
    plot_curves(history, exp_dir)


def _final_report(args, config, model, datasets, exp_dir, meta, evaluate, affine_sets, chief,
                  state):
    # The best weights of the chief's checkpoint (every worker reads the same).
    meta = state.restore_best(model) or meta
    report = {
        "experiment_dir": exp_dir,
        "best_epoch": None if meta["best_epoch"] is None else meta["best_epoch"] + 1,
        "epochs_completed": meta["epoch"] + 1,
        "valid": evaluate(model, datasets.valid), "test": evaluate(model, datasets.test),
        "data": config["data"],
    }
    if affine_sets:
        report["affine"] = evaluate_affine_sets(model, affine_sets, datasets.mean, datasets.std,
                                                batch_size=args.batch_size)
    if args.fsgm_attack:
        unshuffled = datasets.test.unbatch().batch(100)
        report["fgsm"] = fgsm_sweep(model, unshuffled)
    if chief:
        write_json(os.path.join(exp_dir, "report.json"), report)
        export_saved_model(os.path.join(exp_dir, "saved_model"), model)
    _print_report(report)
    return report


def _print_report(report):
    v, t = report["valid"], report["test"]
    print(f"best epoch {report['best_epoch']}: valid top1 {v['top1']:.2f} | test top1 "
          f"{t['top1']:.2f} top5 {t['top5']:.2f} error {t['error']:.2f} loss {t['loss']:.4f}")
    for row in report.get("affine", []):
        print(f"  deformed {row['name']:>12}: top1 {row['top1']:.2f} error {row['error']:.2f}")
    for row in report.get("fgsm", []):
        print(f"  fgsm eps {row['eps']:.2f}: accuracy {row['accuracy']:.2f} loss {row['loss']:.4f}")
    print(f"experiment folder: {report['experiment_dir']}")
