"""The `fab` fixture: the writers of tests/helpers/datasets.py for the data tests."""

import types

import pytest

from tests.helpers.datasets import (
    CIFAR10_NAMES,
    chw_rows,
    dump,
    position_set,
    random_set,
    write_cifar10,
    write_cifar100,
    write_svhn,
)


@pytest.fixture
def fab():
    return types.SimpleNamespace(
        cifar10=write_cifar10, cifar100=write_cifar100, svhn=write_svhn,
        random_set=random_set, position_set=position_set, chw_rows=chw_rows,
        dump=dump, CIFAR10_NAMES=CIFAR10_NAMES,
    )
