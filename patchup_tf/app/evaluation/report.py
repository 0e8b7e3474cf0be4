"""Evaluate a trained model from disk: the library part of `scripts/evaluate.py`.

A model is named by a path, one of

* an experiment folder written by `scripts/train.py` (it has `flags.json`):
  its `best.keras` is evaluated (its `saved_model/` if there is no
  `best.keras`), and its flags give the default data set and data dir;
* a SavedModel folder (it has `saved_model.pb`, e.g. an experiment's
  `saved_model/`): its `serve` function (`model.export`'s endpoint, or the
  `serving_default` signature) is wrapped so that it can be called as a
  Keras model and differentiated with `tf.GradientTape` (FGSM needs input
  gradients);
* a `.keras` file.

`evaluate_model` then reports the test metrics (top-1, top-5, error,
cross-entropy), the deformed CIFAR-100 sets and the FGSM sweep, with the
evaluation code the trainer uses (`evaluate_classifier`,
`evaluate_affine_sets`, `fgsm_sweep`). Every problem with the user's input
raises `EvaluationError` with a one-line message.
"""

import dataclasses
import os
import time
from typing import Any, Optional, Tuple

import tensorflow as tf

from patchup_tf.app import folder as folder_lib
from patchup_tf.app.constants import AFFINE_DATASETS

__all__ = [
    "EvaluationError",
    "LoadedModel",
    "SavedModelClassifier",
    "affine_set_paths",
    "check_affine_sets",
    "check_model_fits",
    "evaluate_model",
    "format_results",
    "load_model",
]


class EvaluationError(ValueError):
    """The model, the data or the options cannot be evaluated together."""


@dataclasses.dataclass
class LoadedModel:
    """A model read from disk.

    Attributes:
        kind: "keras", "saved_model" or "experiment".
        path: the path the user gave.
        weights: the file or folder actually loaded.
        classifier: callable `(images, training=False) -> logits`, usable
            under `tf.GradientTape`.
        keras_model: the Keras model (None for a SavedModel).
        input_shape: the model's image shape without the batch axis (entries
            may be None).
        num_classes: the width of the logits (None if unknown).
        flags: an experiment's `flags.json` content (None otherwise).
    """

    kind: str
    path: str
    weights: str
    classifier: Any
    keras_model: Any
    input_shape: Tuple
    num_classes: Optional[int]
    flags: Optional[dict] = None

    @property
    def dataset(self):
        """The data set an experiment was trained on, else None."""
        return ((self.flags or {}).get("flags") or {}).get("dataset")

    @property
    def data_dir(self):
        """The `--data_dir` an experiment was trained with, else None."""
        return ((self.flags or {}).get("flags") or {}).get("data_dir")


class SavedModelClassifier:
    """A SavedModel's serving function as a differentiable classifier.

    `tf.saved_model.load(path).serve` (what `keras.Model.export` writes) is a
    restored `tf.function`; restored functions carry their gradients, so
    `tf.GradientTape` can differentiate the logits with respect to the
    images, as FGSM needs. A SavedModel without `serve` falls back to its
    `serving_default` signature (keyword input, dict output).

    Args:
        path: the SavedModel folder.
    """

    def __init__(self, path):
        self.path = path
        self._loaded = tf.saved_model.load(path)
        serve = getattr(self._loaded, "serve", None)
        if serve is not None and callable(serve):
            self._fn = serve
            self._keyword = None
            concrete = list(getattr(serve, "concrete_functions", []) or [])
            if not concrete:
                raise EvaluationError(
                    f"SavedModel {path}: its `serve` function has no traced "
                    "signature; export the model with keras.Model.export"
                )
            spec = concrete[0].structured_input_signature[0]
            if len(spec) != 1:
                raise EvaluationError(
                    f"SavedModel {path}: `serve` takes {len(spec)} inputs; "
                    "expected one batch of images"
                )
            in_spec = spec[0]
            out_spec = concrete[0].structured_outputs
        else:
            sigs = getattr(self._loaded, "signatures", {}) or {}
            if "serving_default" not in sigs:
                raise EvaluationError(
                    f"SavedModel {path} has neither a `serve` function nor a "
                    "`serving_default` signature; export the model with "
                    "keras.Model.export"
                )
            fn = sigs["serving_default"]
            _, kwargs = fn.structured_input_signature
            if len(kwargs) != 1:
                raise EvaluationError(
                    f"SavedModel {path}: `serving_default` takes inputs "
                    f"{sorted(kwargs)}; expected one batch of images"
                )
            self._keyword = next(iter(kwargs))
            self._fn = fn
            in_spec = kwargs[self._keyword]
            outputs = fn.structured_outputs
            if len(outputs) != 1:
                raise EvaluationError(
                    f"SavedModel {path}: `serving_default` returns "
                    f"{sorted(outputs)}; expected one tensor of logits"
                )
            out_spec = next(iter(outputs.values()))
        if not isinstance(out_spec, tf.TensorSpec) or out_spec.shape.rank != 2:
            raise EvaluationError(
                f"SavedModel {path} returns {out_spec}; expected logits of "
                "shape (batch, classes)"
            )
        self.input_dtype = in_spec.dtype
        self.input_shape = tuple(in_spec.shape[1:])
        self.num_classes = out_spec.shape[-1]

    def __call__(self, images, training=False):
        if training:
            raise ValueError("A SavedModel classifier runs in inference mode only.")
        images = tf.cast(images, self.input_dtype)
        if self._keyword is None:
            return self._fn(images)
        out = self._fn(**{self._keyword: images})
        return next(iter(out.values()))


def _read_flags(folder):
    path = folder_lib.flags_path(folder)
    try:
        flags = folder_lib.read_flags(folder)
    except (OSError, ValueError) as e:
        raise EvaluationError(f"cannot read {path}: {e}") from e
    if not isinstance(flags, dict):
        raise EvaluationError(f"{path} does not hold a JSON object")
    return flags


def _load_keras(path):
    import keras

    # Registers MixingModel, MixingPoint, DropBlock, PatchUp and TorchSGD.
    import patchup_tf.models  # noqa: F401

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # corrupt or foreign file: report, do not crash
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise EvaluationError(
            f"cannot load Keras model {path}: {type(e).__name__}: {first}"
        ) from e
    try:
        input_shape = tuple(model.inputs[0].shape[1:])
        num_classes = model.outputs[0].shape[-1]
    except (AttributeError, IndexError, TypeError, ValueError):
        try:
            input_shape = tuple(model.input_shape[1:])
            num_classes = model.output_shape[-1]
        except (AttributeError, TypeError, ValueError) as e:
            raise EvaluationError(
                f"{path}: the model's input and output shapes are unknown "
                "(not a built functional model)"
            ) from e
    return model, input_shape, num_classes


def _load_saved_model(path):
    try:
        classifier = SavedModelClassifier(path)
    except EvaluationError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise EvaluationError(
            f"cannot load SavedModel {path}: {type(e).__name__}: {first}"
        ) from e
    return classifier


def load_model(path):
    """Reads an experiment folder, a SavedModel folder or a `.keras` file.

    Returns:
        A `LoadedModel`.

    Raises:
        EvaluationError: the path is none of these, or cannot be loaded.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise EvaluationError(f"model {path} does not exist")
    if os.path.isdir(path):
        if folder_lib.is_experiment(path):
            flags = _read_flags(path)
            best = folder_lib.best_model_path(path)
            exported = folder_lib.saved_model_path(path)
            if os.path.isfile(best):
                loaded = _from_keras(path, best, "experiment")
            elif folder_lib.is_saved_model(exported):
                loaded = _from_saved_model(path, exported, "experiment")
            else:
                raise EvaluationError(
                    f"experiment folder {path} has no {folder_lib.BEST_MODEL} nor "
                    f"{folder_lib.SAVED_MODEL_DIR}/ (no epoch has completed yet)"
                )
            loaded.flags = flags
            return loaded
        if folder_lib.is_saved_model(path):
            return _from_saved_model(path, path, "saved_model")
        raise EvaluationError(
            f"{path} is neither an experiment folder (with {folder_lib.FLAGS_FILE}) nor a "
            f"SavedModel folder (with {folder_lib.SAVED_MODEL_PB})"
        )
    if path.endswith(".keras"):
        return _from_keras(path, path, "keras")
    raise EvaluationError(
        f"{path} is not a .keras file, a SavedModel folder or an experiment folder"
    )


def _from_keras(path, weights, kind):
    model, input_shape, num_classes = _load_keras(weights)
    return LoadedModel(kind, path, weights, model, model, input_shape, num_classes)


def _from_saved_model(path, folder, kind):
    classifier = _load_saved_model(folder)
    return LoadedModel(kind, path, folder, classifier, None, classifier.input_shape,
                       classifier.num_classes)


def check_model_fits(loaded, dataset, image_shape, num_classes):
    """Raises `EvaluationError` unless the model takes `image_shape` images
    and outputs `num_classes` logits."""
    expected = tuple(loaded.input_shape)
    image_shape = tuple(image_shape)
    if len(expected) != len(image_shape) or any(
        e is not None and e != g for e, g in zip(expected, image_shape)
    ):
        shown = tuple("None" if e is None else e for e in expected)
        raise EvaluationError(
            f"model takes images of shape ({', '.join(map(str, shown))}) but "
            f"{dataset} images are {image_shape}"
        )
    if loaded.num_classes is not None and loaded.num_classes != num_classes:
        raise EvaluationError(
            f"model outputs {loaded.num_classes} classes but {dataset} has {num_classes}"
        )


def _check_affine_dataset(dataset):
    if dataset not in AFFINE_DATASETS:
        raise EvaluationError(
            "the deformed sets are made from the test images of CIFAR-100 or of an image "
            f"folder; --affine_path needs --dataset {' or '.join(AFFINE_DATASETS)}, "
            f"not {dataset}"
        )


def affine_set_paths(affine_path, dataset="cifar100"):
    """The eight `<affine_path>/<name>.npz` paths, or `EvaluationError` naming
    the missing ones (or the data set, if it is not CIFAR-100)."""
    from patchup_tf.app.evaluation.affine import AFFINE_SETS

    _check_affine_dataset(dataset)
    if not os.path.isdir(affine_path):
        raise EvaluationError(
            f"--affine_path {affine_path} is not a folder; make the deformed sets "
            f"with: patchup-make-affine-sets --affine_path {affine_path} "
            "--data_dir <CIFAR-100 dir>"
        )
    paths = [os.path.join(affine_path, f"{name}.npz") for name in AFFINE_SETS]
    missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise EvaluationError(
            f"--affine_path {affine_path} lacks {', '.join(missing)}; make them with: "
            f"patchup-make-affine-sets --affine_path {affine_path} "
            "--data_dir <CIFAR-100 dir>"
        )
    return paths


def check_affine_sets(paths, class_names, image_shape):
    """Loads every set and checks it against the test set it stands for.

    Each file must hold the set its name says, images of `image_shape` and
    the test set's class names (so a set made from another data set is
    refused). Returns the number of images per set.
    """
    from patchup_tf.app.evaluation.affine import load_affine_set

    sizes = []
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            images, _, names, _ = load_affine_set(path, name)
        except ValueError as e:
            raise EvaluationError(str(e).splitlines()[0]) from e
        if tuple(images.shape[1:]) != tuple(image_shape):
            raise EvaluationError(
                f"deformed set {path} has images of shape {tuple(images.shape[1:])}, "
                f"expected {tuple(image_shape)}"
            )
        if list(names) != list(class_names):
            raise EvaluationError(
                f"deformed set {path} has {len(names)} classes that are not the "
                f"test set's {len(class_names)} (made from another data set?); "
                "remake it with scripts/make_affine_sets.py"
            )
        sizes.append(int(images.shape[0]))
    return sizes


def evaluate_model(loaded, dataset, raw, *, affine_paths=None, eps_list=None,
                   batch_size=100, data_dir=None, mean_std=None):
    """Test metrics, deformed sets and FGSM of `loaded` on `raw`'s test set.

    Args:
        loaded: a `LoadedModel`.
        dataset: the data set's name (for its normalisation statistics).
        raw: its `RawData` (uint8 test images, int64 labels, class names).
        affine_paths: the deformed sets to evaluate (CIFAR-100 only), or None.
        eps_list: FGSM perturbation sizes (as `check_eps_list` returns
            them), or None for no FGSM.
        batch_size: the batch size of every evaluation; the FGSM range
            `[min, max]` is taken per batch, so the paper's numbers need 100.
        data_dir: recorded in the results.
        mean_std: the `(mean, std)` the model was trained with (0-255
            units); None: the data set's (`MEAN_STD`). An image folder has
            none: give the statistics its experiment recorded.

    Returns:
        A JSON-able dict: `model`, `model_kind`, `weights`, `dataset`,
        `data_dir`, `num_test`, `num_classes`, `batch_size`, `test`
        (`top1, top5, error, loss`), and when asked `affine` (one row per
        set: `name, path, top1, top5, error, loss`), `fgsm_eps` and `fgsm`
        (`eps, accuracy, loss` per eps), plus `seconds`.
    """
    from patchup_tf.app.data import NUM_CLASSES, normalize
    from patchup_tf.app.evaluation.affine import evaluate_affine_sets
    from patchup_tf.app.evaluation.fgsm import fgsm_sweep
    from patchup_tf.app.evaluation.metrics import evaluate_classifier

    _check_batch_size(batch_size)
    num_classes = NUM_CLASSES.get(dataset) or len(raw.class_names)
    image_shape = tuple(raw.x_test.shape[1:])
    check_model_fits(loaded, dataset, image_shape, num_classes)
    if affine_paths:
        _check_affine_dataset(dataset)
        check_affine_sets(affine_paths, raw.class_names, image_shape)
    start = time.time()
    mean, std = _normalisation(dataset, mean_std)
    x = normalize(raw.x_test, mean, std)
    test = tf.data.Dataset.from_tensor_slices((x, raw.y_test)).batch(batch_size)
    results = _model_facts(loaded, dataset, raw, data_dir, num_classes, batch_size)
    results["test"] = evaluate_classifier(loaded.classifier, test)
    if affine_paths:
        results["affine"] = evaluate_affine_sets(
            loaded.classifier, affine_paths, mean, std, batch_size=batch_size
        )
    if eps_list is not None:
        results["fgsm_eps"] = list(eps_list)
        results["fgsm"] = fgsm_sweep(loaded.classifier, test, eps_list)
    results["seconds"] = time.time() - start
    return results


def _check_batch_size(batch_size):
    """Raises `EvaluationError` unless `batch_size` is an int >= 1 (not a bool)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EvaluationError(f"batch size must be an integer >= 1, got {batch_size!r}")


def _normalisation(dataset, mean_std):
    """The `(mean, std)` to normalise with: `mean_std`, else the data set's.

    Raises `EvaluationError` when neither is known (an image folder's
    statistics live in its experiment's flags.json).
    """
    from patchup_tf.app.data import MEAN_STD

    if mean_std is None and dataset not in MEAN_STD:
        raise EvaluationError(
            f"the normalisation of a model trained on {dataset} data is recorded in its "
            f"experiment folder's {folder_lib.FLAGS_FILE} (data.mean, data.std): evaluate the "
            "experiment folder, or a model inside it"
        )
    return mean_std if mean_std is not None else MEAN_STD[dataset]


def _model_facts(loaded, dataset, raw, data_dir, num_classes, batch_size):
    """The results' first entries: the model, its data and the batch size."""
    return {
        "model": os.path.abspath(loaded.path),
        "model_kind": loaded.kind,
        "weights": os.path.abspath(loaded.weights),
        "dataset": dataset,
        "data_dir": None if data_dir is None else os.fspath(data_dir),
        "num_test": int(raw.x_test.shape[0]),
        "num_classes": int(num_classes),
        "batch_size": batch_size,
    }


def format_results(results):
    """The results as a plain-text table (what `scripts/evaluate.py` prints)."""
    lines = [
        f"model   {results['weights']} ({results['model_kind']})",
        f"data    {results['dataset']} test set, {results['num_test']} images, "
        f"batches of {results['batch_size']}",
        "",
        f"{'set':<16}{'top1 %':>9}{'top5 %':>9}{'error %':>9}{'loss':>9}",
    ]

    def row(name, m):
        return (f"{name:<16}{m['top1']:>9.2f}{m['top5']:>9.2f}{m['error']:>9.2f}"
                f"{m['loss']:>9.4f}")

    lines.append(row("test", results["test"]))
    for r in results.get("affine", []):
        lines.append(row(r["name"], r))
    if "fgsm" in results:
        lines += ["", "FGSM (test set)", f"{'eps':<16}{'acc %':>9}{'loss':>9}"]
        for r in results["fgsm"]:
            lines.append(f"{r['eps']:<16.3g}{r['accuracy']:>9.2f}{r['loss']:>9.4f}")
    return "\n".join(lines)
