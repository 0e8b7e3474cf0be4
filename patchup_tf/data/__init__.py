"""Data sets and tf.data pipelines: CIFAR-10/100, SVHN and the digits demo set."""

from patchup_tf.data.pipeline import (
    AUGMENTATION,
    DEFAULT_SPLIT,
    Datasets,
    TrainSpec,
    apply_augmentation,
    augment_batch,
    make_datasets,
    make_eval_dataset,
    make_train_dataset,
    normalize,
    sample_augmentation,
    split_per_class,
    train_epochs,
)
from patchup_tf.data.sources import (
    DATASETS,
    MEAN_STD,
    NUM_CLASSES,
    TFDS_NAMES,
    DataError,
    RawData,
    load_raw,
)

__all__ = [
    "AUGMENTATION",
    "DATASETS",
    "DEFAULT_SPLIT",
    "MEAN_STD",
    "NUM_CLASSES",
    "TFDS_NAMES",
    "DataError",
    "Datasets",
    "RawData",
    "TrainSpec",
    "apply_augmentation",
    "augment_batch",
    "load_raw",
    "make_datasets",
    "make_eval_dataset",
    "make_train_dataset",
    "normalize",
    "sample_augmentation",
    "split_per_class",
    "train_epochs",
]
