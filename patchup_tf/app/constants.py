"""The application's constants: data sets, image folders, precisions, the FGSM sweep.

The library's own names and validators live in `patchup_tf.rules`; what only
the trainer, its data readers and its evaluation suites need lives here. No
TensorFlow is imported, so the programs answer a bad flag at once.
"""

import math

from patchup_tf.rules import is_real

DATASETS = ("cifar10", "cifar100", "svhn", "digits", "folder")
FOLDER = "folder"  # a user's images, one sub-folder per class (`--data_dir DIR`)
FOLDER_SPLITS = ("train", "valid", "test")  # DIR/<split>/<class>/...; valid/ is optional
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # lower case; names match any case
# Data sets that are also read from a folder per class (DIR/train/<class>/), with
# their class order (CIFAR-10's is its label order, which is also alphabetical).
FOLDER_CLASSES = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck"),
}
AFFINE_DATASETS = ("cifar100", FOLDER)  # whose test split the deformed sets may come from
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # Keras dtype policies
FGSM_EPS = (0.0, 0.05, 0.1, 0.12, 0.15, 0.18, 0.2)  # the paper's FGSM sweep


def is_fgsm_eps(eps):
    """An FGSM eps: a finite real number >= 0 (not a bool)."""
    return is_real(eps) and math.isfinite(float(eps)) and float(eps) >= 0


def check_eps_list(eps_list):
    """FGSM's eps values as floats; each `is_fgsm_eps`, at least one."""
    values = []
    for eps in eps_list:
        if not is_fgsm_eps(eps):
            raise ValueError(f"FGSM eps must be a finite number >= 0, got {eps!r}")
        values.append(float(eps))
    if not values:
        raise ValueError("FGSM needs at least one eps")
    return values
