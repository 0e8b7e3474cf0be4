"""Made-up inputs: pre-made normalised batches, random uint8 images, and the
trainer's own training stream over them."""


def synthetic_batches(batch_size, num_classes=10, distinct=2, seed=0):
    """An endless in-memory dataset of `distinct` pre-made normalised batches."""
    import tensorflow as tf

    shape = [distinct, batch_size, 32, 32, 3]
    images = tf.random.stateless_normal(shape, [seed, 1])
    labels = tf.random.stateless_uniform(
        [distinct, batch_size], [seed, 2], 0, num_classes, dtype=tf.int32
    )
    targets = tf.one_hot(labels, num_classes)
    return tf.data.Dataset.from_tensor_slices((images, targets)).repeat()


def numpy_batches(batch_size, num_classes=10, distinct=2, seed=0):
    """`synthetic_batches` without TensorFlow: an endless generator of
    `distinct` pre-made normalised NumPy batches (for `fit` on any backend)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((distinct, batch_size, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=(distinct, batch_size))
    targets = np.eye(num_classes, dtype=np.float32)[labels]
    while True:
        for i in range(distinct):
            yield images[i], targets[i]


def synthetic_cifar(n, num_classes=10, seed=0):
    """Random uint8 `(n, 32, 32, 3)` images and int64 labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, num_classes, size=n).astype(np.int64)
    return x, y


def trainer_stream(x, y, num_classes, *, batch_size, seed=0, flip=True, pad=2,
                   dataset="cifar10"):
    """The endless training stream the trainer feeds `fit` with, over arrays.

    The trainer builds `make_datasets(...)` and then iterates
    `train_epochs(datasets, first_epoch)`; this builds the same stream from
    in-memory uint8 arrays (CIFAR-10's mean and std). Returns
    `(dataset, name)`.
    """
    import types

    from patchup_tf.app import data as data_lib

    mean, std = data_lib.MEAN_STD[dataset]
    spec = data_lib.TrainSpec(x=x, y=y, num_classes=num_classes, mean=tuple(mean),
                              std=tuple(std), batch_size=batch_size, seed=seed, augment=True,
                              flip=flip, pad=pad)
    stream = data_lib.train_epochs(types.SimpleNamespace(train_spec=spec), first_epoch=0)
    return stream, "train_epochs"
