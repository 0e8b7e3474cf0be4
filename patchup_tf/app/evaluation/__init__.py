"""Evaluation suites: clean metrics, FGSM robustness, deformed-image sets."""

from patchup_tf.app.evaluation.affine import (
    AFFINE_SETS,
    AffineSpec,
    affine_matrix,
    apply_affine,
    describe_affine_set,
    draw_affine_params,
    evaluate_affine_sets,
    load_affine_set,
    make_affine_set,
    make_all_affine_sets,
    save_affine_set,
)
from patchup_tf.app.evaluation.fgsm import DEFAULT_EPS, fgsm, fgsm_sweep
from patchup_tf.app.evaluation.metrics import evaluate_classifier
from patchup_tf.app.evaluation.report import (
    EvaluationError,
    LoadedModel,
    SavedModelClassifier,
    evaluate_model,
    format_results,
    load_model,
)

__all__ = [
    "AFFINE_SETS",
    "AffineSpec",
    "DEFAULT_EPS",
    "EvaluationError",
    "LoadedModel",
    "SavedModelClassifier",
    "affine_matrix",
    "apply_affine",
    "describe_affine_set",
    "draw_affine_params",
    "evaluate_affine_sets",
    "evaluate_classifier",
    "evaluate_model",
    "fgsm",
    "fgsm_sweep",
    "format_results",
    "load_affine_set",
    "load_model",
    "make_affine_set",
    "make_all_affine_sets",
    "save_affine_set",
]
