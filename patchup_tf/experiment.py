"""One experiment: data, model, training, checkpoints and reports in a folder.

`run(argv)` is `scripts/train.py`. The experiment folder (under `--root_dir`,
named from the flags as the reference names it) holds:

* `flags.json`: every flag, resolved (method options, schedule, precision);
* `log.txt`: the flags and one line per epoch, as the reference's;
* `log.csv`, `log.json`, `log.pkl`: per epoch lr, train loss/accuracy,
  valid and test loss/top-1/top-5/error, seconds;
* `tensorboard/`: TensorBoard events; `loss.png`, `accuracy.png`: curves;
* `state.npz`: model + optimizer state after the last completed epoch, the
  resume point; `best.keras`: the weights of the strictly best validation
  epoch; `last.keras` with `--checkpoint True`;
* `report.json`: validation/test metrics of the best weights (plus the
  deformed sets and FGSM when asked); `saved_model/`: its SavedModel.

Every file is written atomically (temporary file, then rename), so a run
killed at any moment restarts with the same command from its last completed
epoch and ends with the same log and weights as an uninterrupted run.
"""

import csv
import json
import math
import os
import pickle
import shutil
import sys
import tempfile
import time
import zipfile

import numpy as np

from patchup_tf import flags as flags_lib


class _LazyModule:
    """`keras`, imported on first use: a bad command line is answered (exit 2)
    before TensorFlow loads, which takes ~10 s."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        import importlib

        return getattr(importlib.import_module(self._name), attr)


keras = _LazyModule("keras")

EXIT_BAD_INPUT = 2
EXIT_NAN = 3
LOG_FIELDS = (
    "epoch", "lr", "train_loss", "train_accuracy", "valid_loss", "valid_top1",
    "valid_top5", "valid_error", "test_loss", "test_top1", "test_top5", "test_error",
    "seconds",
)


# ------------------------------------------------------------------ files
TMP_PREFIX = ".tmp-"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def remove_stale_temporaries(directory):
    """Deletes the temporary files a killed run left behind in `directory`."""
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def atomic_write(path, write_fn, suffix=""):
    """Calls `write_fn(tmp_path)` then renames the result onto `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=directory)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide the logs from others
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def save_state(path, model, meta):
    """Model and optimizer variables plus `meta` in one `.npz`, atomically."""
    arrays = {f"m{i}": v.numpy() for i, v in enumerate(model.variables)}
    arrays.update({f"o{i}": v.numpy() for i, v in enumerate(model.optimizer.variables)})
    arrays["meta"] = np.array(json.dumps(meta, default=_jsonable))

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write, suffix=".npz")


def load_state(path, model):
    """Restores what `save_state` wrote into a built model; returns `meta`."""
    with np.load(path, allow_pickle=False) as data:
        model.optimizer.build(model.trainable_variables)
        for prefix, variables in (("m", model.variables), ("o", model.optimizer.variables)):
            count = sum(1 for k in data.files if k.startswith(prefix) and k[1:].isdigit())
            if count != len(variables):
                raise ValueError(
                    f"{path} holds {count} {'model' if prefix == 'm' else 'optimizer'} "
                    f"variables but the model has {len(variables)}: it belongs to "
                    "another configuration. Use another --root_dir or --job_id."
                )
            for i, variable in enumerate(variables):
                variable.assign(data[f"{prefix}{i}"])
        return json.loads(str(data["meta"]))


def save_keras(path, model):
    atomic_write(path, model.save, suffix=".keras")


def export_saved_model(path, model):
    """`model.export` into a temporary folder, then renamed onto `path`."""
    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + "export-", dir=parent)
    try:
        model.export(os.path.join(tmp, "m"), verbose=False)
        old = path + ".old"
        shutil.rmtree(old, ignore_errors=True)  # left by a run killed right here
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(os.path.join(tmp, "m"), path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- helpers
def choose_precision(requested, mixed_flag=False):
    """`auto` -> mixed_bfloat16 on a GPU or a CPU with AMX bf16 tiles, else float32.

    AVX-512 BF16 alone is not enough: measured with `scripts/benchmark.py`
    on such a CPU (no AMX), a bf16 PreActResNet18 step costs ~50% more CPU
    than float32 (oneDNN's bf16 weight-gradient convolutions are slower).
    """
    if mixed_flag:
        return "mixed_bfloat16"
    if requested != "auto":
        return requested
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_bfloat16"
    try:
        with open("/proc/cpuinfo") as f:
            cpu_flags = f.read().split()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if "amx_bf16" in cpu_flags else "float32"


def make_strategy(name):
    import tensorflow as tf

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


def fail(message, code=EXIT_BAD_INPUT):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


# ----------------------------------------------------------------- config
def resolve(argv):
    """Parses and checks the flags; returns `(args, config)` or exits 2."""
    parser = flags_lib.build_parser()
    args = parser.parse_args(argv)
    try:
        method = flags_lib.resolve_method(args)
        epochs, schedule, factors = flags_lib.resolve_schedule(args)
        options = flags_lib.method_options(args, method)
        flags_lib.check_values(args, method, options)  # fast: no TensorFlow yet
        if args.affine_test and not args.affine_path:
            raise flags_lib.FlagError("--affine_test needs --affine_path DIR "
                                      "(made by scripts/make_affine_sets.py)")
        name = flags_lib.experiment_name(args, method, epochs)
        if len(name.encode()) > 255:
            raise flags_lib.FlagError(
                f"the experiment folder name would be {len(name.encode())} bytes long, more "
                "than file systems allow (255); shorten --add_name or --job_id")
        from patchup_tf.methods import Method  # loads TensorFlow

        Method(method, **options)
    except ValueError as e:
        parser.exit(EXIT_BAD_INPUT, f"error: {e}\n")
    config = {
        "flags": vars(args), "method": method, "method_options": options,
        "epochs": epochs, "schedule": schedule, "step_factors": factors,
        "precision": choose_precision(args.precision, args.mixed_precision),
        "experiment_dir": os.path.join(args.root_dir, name), "argv": list(argv),
    }
    return args, config


# -------------------------------------------------------------------- run
def run(argv=None):
    """Trains, evaluates and reports one experiment; returns the report dict."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, config = resolve(argv)

    from patchup_tf import data as data_lib
    from patchup_tf.evaluation import evaluate_classifier

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
        )
    except ValueError as e:  # DataError included
        fail(str(e))
    affine_sets = _find_affine_sets(args) if args.affine_test else []

    keras.mixed_precision.set_global_policy(config["precision"])
    exp_dir = config["experiment_dir"]
    chief = is_chief()
    state_path = os.path.join(exp_dir, "state.npz")
    if os.path.exists(state_path):
        _check_same_run(exp_dir, config)
    try:
        os.makedirs(exp_dir, exist_ok=True)
    except OSError as e:  # unwritable --root_dir, a name too long for the file system
        fail(f"cannot create the experiment folder {exp_dir}: {e.strerror or e}")
    if chief:
        remove_stale_temporaries(exp_dir)
    with strategy.scope():
        model = _build_model(args, config, datasets.num_classes)
    meta = {"epoch": -1, "best_valid_top1": -math.inf, "best_epoch": None, "history": []}
    if os.path.exists(state_path):
        try:
            meta = load_state(state_path, model)
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as e:
            fail(f"cannot resume from {state_path}: {e}")
        print(f"resuming {exp_dir} after epoch {meta['epoch']}")
    elif chief:
        write_json(os.path.join(exp_dir, "flags.json"), config)
        write_text(os.path.join(exp_dir, "log.txt"), json.dumps(config["flags"], sort_keys=True) + "\n")

    logger = _epoch_logger_class()(model, datasets, config, exp_dir, meta, evaluate_classifier,
                                   chief)
    if meta["epoch"] + 1 < config["epochs"]:
        train_ds = data_lib.train_epochs(datasets, first_epoch=meta["epoch"] + 1)
        from patchup_tf.training import step_lr

        lr_at = step_lr(args.learning_rate, config["schedule"], config["step_factors"])
        callbacks = [
            keras.callbacks.LearningRateScheduler(lr_at),
            logger,
            keras.callbacks.TensorBoard(os.path.join(exp_dir, "tensorboard"), write_graph=False)
            if chief else keras.callbacks.Callback(),
        ]
        if args.strategy == "multi_worker":  # fit fails there (keras-team/keras#20585)
            from patchup_tf.distributed import train_loop

            train_loop(model, train_ds, epochs=config["epochs"], initial_epoch=meta["epoch"] + 1,
                       steps_per_epoch=datasets.steps_per_epoch, lr_at=lr_at,
                       callbacks=callbacks, strategy=strategy,
                       verbose=args.verbose if chief else 0)
        else:
            model.fit(
                train_ds, epochs=config["epochs"], initial_epoch=meta["epoch"] + 1,
                steps_per_epoch=datasets.steps_per_epoch, callbacks=callbacks,
                verbose=args.verbose, shuffle=False,  # the stream is shuffled (and resumable)
            )
        if logger.nan_at is not None:
            done = logger.meta["epoch"]
            kept = (f"the last good checkpoint, {state_path} (after epoch {done}), is kept"
                    if done >= 0 else "no epoch completed, so no checkpoint was written")
            fail(f"the training loss became NaN at epoch {logger.nan_at[0]}, step "
                 f"{logger.nan_at[1]}; stopped; {kept}. Lower --learning_rate.", EXIT_NAN)
    report = _final_report(args, config, model, datasets, exp_dir, logger.meta,
                           evaluate_classifier, affine_sets, chief)
    return report


# What must match for a folder's state.npz to be resumed by this command (the
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
        return  # Older or foreign folder: load_state's own checks apply.
    now = json.loads(json.dumps(config, default=_jsonable))
    differ = [k for k in _RUN_KEYS if saved.get(k) != now.get(k)]

    def options(c):  # unset options are the paper's
        resolved = {**flags_lib.PAPER_DEFAULTS.get(c.get("method"), {}),
                    **(c.get("method_options") or {})}
        return json.loads(json.dumps(resolved, default=_jsonable))

    if options(saved) != options(now):
        differ.append("method options")
    differ += [f"--{k}" for k in _RUN_FLAGS
               if saved.get("flags", {}).get(k) != now["flags"].get(k)]
    if differ:
        fail(f"{exp_dir} holds a run with other settings ({', '.join(differ)} differ); "
             "resume it with its own command (see its flags.json) or start a new one with "
             "another --job_id, --add_name or --root_dir")


def _build_model(args, config, num_classes):
    from patchup_tf import models
    from patchup_tf.training import recipe

    model = models.build(args.arch, num_classes, config["method"], seed=args.seed,
                         **config["method_options"])
    optimizer, _ = recipe(args.learning_rate, args.momentum, args.decay,
                          config["schedule"], config["step_factors"])
    model.compile(optimizer=optimizer, jit_compile=bool(args.jit_compile))
    model.optimizer.build(model.trainable_variables)
    return model


def _find_affine_sets(args):
    from patchup_tf.evaluation import affine

    paths = [os.path.join(args.affine_path, f"{name}.npz") for name in affine.AFFINE_SETS]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        fail(f"--affine_path {args.affine_path} lacks {', '.join(map(os.path.basename, missing))}; "
             f"make them with: python scripts/make_affine_sets.py --affine_path {args.affine_path} "
             "--data_dir <CIFAR-100 dir>")
    if args.dataset != "cifar100":
        fail(f"the deformed sets are CIFAR-100 images; --affine_test needs --dataset cifar100, "
             f"not {args.dataset}")
    return paths


def _epoch_logger_class():
    """`EpochLogger`, made on first use (its base class needs Keras)."""
    cls = globals().get("EpochLogger")
    if cls is None:
        cls = type("EpochLogger", (_EpochLoggerBody, keras.callbacks.Callback),
                   {"__doc__": _EpochLoggerBody.__doc__, "__module__": __name__})
        globals()["EpochLogger"] = cls
    return cls


def __getattr__(name):  # `from patchup_tf.experiment import EpochLogger`
    if name == "EpochLogger":
        return _epoch_logger_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _EpochLoggerBody:
    """Per-epoch evaluation, logs, best and resume checkpoints, NaN guard."""

    def __init__(self, model, datasets, config, exp_dir, meta, evaluate, chief):
        super().__init__()
        self._model_ref, self.datasets, self.config = model, datasets, config
        self.exp_dir, self.meta, self.evaluate, self.chief = exp_dir, meta, evaluate, chief
        self.nan_at = None
        self._start = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_at = (self.meta["epoch"] + 1, batch)
            self._model_ref.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_at is not None:
            return  # keep the last good checkpoint untouched
        model, logs = self._model_ref, logs or {}
        valid = self.evaluate(model, self.datasets.valid)
        test = self.evaluate(model, self.datasets.test)
        row = {
            "epoch": epoch, "lr": float(model.optimizer.learning_rate.numpy()),
            "train_loss": float(logs.get("loss", float("nan"))),
            "train_accuracy": 100.0 * float(logs.get("accuracy", float("nan"))),
            **{f"valid_{k}": float(v) for k, v in valid.items()},
            **{f"test_{k}": float(v) for k, v in test.items()},
            "seconds": time.time() - self._start,
        }
        meta = dict(self.meta)
        meta["history"] = list(meta["history"]) + [row]
        meta["epoch"] = epoch
        if not self.chief:
            self.meta = meta
            return
        if row["valid_top1"] > meta["best_valid_top1"]:
            meta["best_valid_top1"], meta["best_epoch"] = row["valid_top1"], epoch
            save_keras(os.path.join(self.exp_dir, "best.keras"), model)
        if self.config["flags"].get("checkpoint"):
            save_keras(os.path.join(self.exp_dir, "last.keras"), model)
        write_logs(self.exp_dir, meta["history"], self.config)
        # The resume point is written last: everything above is already on disk.
        save_state(os.path.join(self.exp_dir, "state.npz"), model, meta)
        self.meta = meta


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
    from patchup_tf.plots import plot_curves

    plot_curves(history, exp_dir)


def _final_report(args, config, model, datasets, exp_dir, meta, evaluate, affine_sets, chief):
    best_path = os.path.join(exp_dir, "best.keras")
    if os.path.exists(best_path):
        best = keras.models.load_model(best_path, compile=False)
        model.set_weights(best.get_weights())
    report = {
        "experiment_dir": exp_dir, "best_epoch": meta["best_epoch"],
        "epochs_completed": meta["epoch"] + 1,
        "valid": evaluate(model, datasets.valid), "test": evaluate(model, datasets.test),
    }
    if affine_sets:
        from patchup_tf.evaluation import evaluate_affine_sets

        report["affine"] = evaluate_affine_sets(model, affine_sets, datasets.mean, datasets.std,
                                                batch_size=args.batch_size)
    if args.fsgm_attack:
        from patchup_tf.evaluation import fgsm_sweep

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
