"""What a data set reader returns, and the error it raises."""

from typing import NamedTuple, Tuple

import numpy as np


class DataError(ValueError):
    """Raised when a data set cannot be found or its files are unusable."""


class RawData(NamedTuple):
    """Decoded arrays of one data set: uint8 NHWC images, int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: Tuple[str, ...]
