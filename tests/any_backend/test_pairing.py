"""The `pairing` option on whichever Keras backend runs, on one device:
accepted by `build`, `attach` and `MixingModel`, kept by `.keras` files,
refused when unknown, and without effect on one device (both values draw
the same plans). Several devices: `tests/app/experiment/test_distributed.py`,
`tests/app/experiment/test_multi_worker.py`, `tests/test_jax_scale_out.py`.
"""

import keras
import numpy as np
import pytest

from patchup_tf import mixing
from patchup_tf.attachment import attach
from patchup_tf.models import build
from patchup_tf.training import MixingModel
from tests.any_backend.test_model import batch, micro_layers, npy
from tests.any_backend.test_steps import frozen, step_losses


def test_the_default_is_replica_and_every_entry_point_takes_it(tmp_path):
    assert frozen().pairing == "replica"
    net = build("wrn28_2", 10, "soft_patchup", seed=0, pairing="global")
    assert net.method.options["pairing"] == "global"
    attached = attach(keras.Model(*micro_layers(points=False)), "mixup", seed=0,
                      pairing="global")
    assert attached.pairing == "global"
    attached.compile(optimizer="sgd")
    attached.save(tmp_path / "global.keras")
    assert keras.models.load_model(tmp_path / "global.keras").pairing == "global"


@pytest.mark.parametrize("bad", ["globl", "", None, 1])
def test_an_unknown_pairing_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match=r"pairing.*replica, global.*Received"):
        MixingModel(*micro_layers(), method="mixup", method_options={"pairing": bad})


def test_on_one_device_both_pairings_train_alike():
    x, y = batch(8)
    replica = step_losses(frozen(seed=3, pairing="replica"), epochs=3, x=x, y=y)
    global_ = step_losses(frozen(seed=3, pairing="global"), epochs=3, x=x, y=y)
    np.testing.assert_array_equal(replica, global_)


def test_grouped_permutations_stay_in_their_groups_and_one_group_is_the_plain_one():
    np.testing.assert_array_equal(npy(mixing.permutation(12, 5, groups=1)),
                                  npy(mixing.permutation(12, 5)))
    keys = npy(mixing.uniform([12], 5))
    grouped = npy(mixing.permutation(12, 5, groups=3))
    for g in range(3):  # block g: the argsort of its own keys, offset by its start
        np.testing.assert_array_equal(grouped[4 * g:4 * g + 4],
                                      4 * g + np.argsort(keys[4 * g:4 * g + 4], kind="stable"))
    with pytest.raises(ValueError, match="multiple of 5"):
        mixing.permutation(12, 5, groups=5)
