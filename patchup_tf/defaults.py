"""The methods, their options and the paper's settings (no TensorFlow import).

`patchup_tf.methods` builds on these; the command line reads them without
loading TensorFlow, so a bad flag is answered at once.
"""

METHODS = (
    "vanilla",
    "mixup",
    "manifold_mixup",
    "cutout",
    "cutmix",
    "dropblock",
    "soft_patchup",
    "hard_patchup",
)
NUM_POSITIONS = 5  # 0 = input images, 1 = after the stem, 2..4 = after stages 1..3

_PATCHUP = {"alpha": 2.0, "patchup_prob": 1.0, "block_size": 7, "k": 2,
            "loss_params": (1.0, 1.0)}
PAPER_DEFAULTS = {
    "vanilla": {},
    "mixup": {"alpha": 1.0},
    "manifold_mixup": {"alpha": 1.5, "k": 2},
    "cutout": {"cutout": 16},
    "cutmix": {"cutmix_prob": 0.4},
    "dropblock": {"block_size": 7, "keep_prob": 0.9, "dropblock_all": True, "k": 2},
    "soft_patchup": {**_PATCHUP, "gamma": 0.75, "patchup_prob": 1.0},
    "hard_patchup": {**_PATCHUP, "gamma": 0.5, "patchup_prob": 0.7},
}
"""Options each method takes and their defaults (the paper's runs)."""

COMMON_DEFAULTS = {"loss": "bce"}
