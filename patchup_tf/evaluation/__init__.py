"""Evaluation suites: clean metrics, FGSM robustness, deformed-image sets."""

from patchup_tf.evaluation.affine import (
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
from patchup_tf.evaluation.fgsm import DEFAULT_EPS, fgsm, fgsm_sweep
from patchup_tf.evaluation.metrics import evaluate_classifier

__all__ = [
    "AFFINE_SETS",
    "AffineSpec",
    "DEFAULT_EPS",
    "affine_matrix",
    "apply_affine",
    "describe_affine_set",
    "draw_affine_params",
    "evaluate_affine_sets",
    "evaluate_classifier",
    "fgsm",
    "fgsm_sweep",
    "load_affine_set",
    "make_affine_set",
    "make_all_affine_sets",
    "save_affine_set",
]
