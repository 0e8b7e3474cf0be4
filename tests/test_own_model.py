"""The README's "your own model" snippet runs as written and trains."""

import keras
import numpy as np

SNIPPET = '''\
import keras
import numpy as np
from patchup_tf.layers import MixingPoint
from patchup_tf.training import MixingModel, recipe

inputs = keras.Input((32, 32, 3))
x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
x = MixingPoint(1)(x)  # position 1: after the stem
x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
x = MixingPoint(2)(x)  # position 2: after stage 1
x = keras.layers.GlobalAveragePooling2D()(x)
outputs = keras.layers.Dense(10)(x)  # logits
model = MixingModel(inputs, outputs, method="soft_patchup",
                    method_options={"k": 2}, seed=0)
optimizer, lr_schedule = recipe()  # PyTorch's SGD and the step schedule
model.compile(optimizer=optimizer)
images, labels = np.random.rand(64, 32, 32, 3), np.random.randint(0, 10, 64)
model.fit(images, labels, batch_size=32, epochs=2, callbacks=[lr_schedule])
'''


def test_snippet_is_short():
    assert len(SNIPPET.strip().splitlines()) < 20


def test_snippet_trains():
    from patchup_tf.optimizer import TorchSGD
    from patchup_tf.training import MixingModel

    keras.utils.set_random_seed(3)
    scope = {}
    exec(SNIPPET, scope)
    model = scope["model"]
    assert isinstance(model, MixingModel)
    assert isinstance(model.optimizer, TorchSGD)
    assert model.method.name == "soft_patchup" and model.method.hidden_positions == (1, 2)
    assert int(model.optimizer.iterations) == 4  # 2 epochs x 2 batches
    history = model.history.history
    assert np.isfinite(history["loss"]).all() and len(history["loss"]) == 2
    np.testing.assert_allclose(history["learning_rate"], [0.1, 0.1], rtol=1e-6)

    # The same model before `fit` (same Keras seed, so the same initial
    # weights every time): training moved the weights.
    def untrained():
        keras.utils.set_random_seed(3)
        scope = {}
        exec(SNIPPET.split("model.fit(")[0], scope)
        return scope["model"].get_weights()

    before, again, after = untrained(), untrained(), model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, again))
    assert all(a.shape == b.shape for a, b in zip(before, after))
    assert max(np.abs(a - b).max() for a, b in zip(before, after)) > 1e-4
