"""The `fabricated` data sets of the command-line tests (see tests/helpers/trainer.py),
the session's one trained experiment (`trained_experiment`) and the tiny
network for in-process runs whose subject is not the network (`tiny_network`)."""

import os
import types

import pytest

from tests.helpers.datasets import random_set
from tests.helpers.tiny import tiny_build
from tests.helpers.trainer import (
    NUM_CLASSES,
    TEST_SIZE,
    TRAINED_RUN,
    TRAIN_PER_CLASS,
    WRITERS,
    describe,
    only_experiment,
    original_run_args,
    train_in_process,
)


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


@pytest.fixture(scope="session")
def trained_experiment(fabricated, tmp_path_factory):
    """One finished experiment folder, trained once per session for every
    test that only reads one (the original command's checks in
    `test_train_cli.py`, `evaluate` on an experiment folder in
    `test_evaluate_scripts.py`).

    `TRAINED_RUN`'s command with the tests' overrides (`original_run_args`:
    1 epoch, a few images per class, wrn28_2), run by the trainer's `main`
    in this process. A namespace: `label`, `dataset`, `argv`, `root`,
    `folder` (the experiment folder), `data_dir`, `proc` (the exit code and
    output). Tests must not change the folder (copy it first).
    """
    label, dataset = TRAINED_RUN
    root = str(tmp_path_factory.mktemp("trained_experiment") / "experiments")
    argv = original_run_args(label, fabricated.dirs[dataset], root, dataset=dataset)
    proc = train_in_process(argv)
    assert proc.returncode == 0, describe(proc)
    return types.SimpleNamespace(label=label, dataset=dataset, argv=argv, root=root,
                                 folder=only_experiment(root), data_dir=fabricated.dirs[dataset],
                                 proc=proc)


@pytest.fixture
def tiny_network(monkeypatch):
    """In-process runs of the trainer build tests/helpers/tiny.py's network
    whatever `--arch` says (`tiny_build`): for tests of what the trainer does
    around the network (NaN handling, data sets), where building and
    tracing wrn28_2 would cost most of the time. The paper's networks run
    end to end in `trained_experiment`, `test_train_cli.py` and
    `test_resume.py`."""
    import patchup_tf.models

    monkeypatch.setattr(patchup_tf.models, "build", tiny_build)
