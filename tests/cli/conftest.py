"""The `fabricated` data sets of the command-line tests (see tests/helpers/trainer.py)."""

import os
import types

import pytest

from tests.helpers.datasets import random_set
from tests.helpers.trainer import NUM_CLASSES, TEST_SIZE, TRAIN_PER_CLASS, WRITERS


@pytest.fixture(scope="session")
def fabricated(tmp_path_factory):
    """Tiny CIFAR-10, CIFAR-100 and SVHN folders in torchvision's formats.

    Returns a namespace with `dirs[name]` (the folder to pass as --data_dir),
    plus the writer helpers for tests that need broken copies.
    """
    root = tmp_path_factory.mktemp("data")
    dirs = {}
    for i, name in enumerate(("cifar10", "cifar100", "svhn")):
        k = NUM_CLASSES[name]
        x, y = random_set(TRAIN_PER_CLASS[name] * k, k, seed=10 + i)
        xt, yt = random_set(TEST_SIZE[name], k, seed=20 + i)
        dirs[name] = os.path.join(str(root), name)
        WRITERS[name](dirs[name], x, y, xt, yt)
    return types.SimpleNamespace(dirs=dirs, write=WRITERS, random_set=random_set,
                                 num_classes=NUM_CLASSES)
