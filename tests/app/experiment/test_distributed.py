"""`MixingModel` under a two-replica MirroredStrategy (two logical CPUs).

Logical devices must exist before TensorFlow initialises, so the run happens
in a fresh interpreter (`tests/helpers/distributed_run.py`), which prints its
measurements as JSON; the assertions are here.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import HELPERS

SCRIPT = os.path.join(HELPERS, "distributed_run.py")


@pytest.fixture(scope="module")
def result():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, SCRIPT], capture_output=True, text=True, timeout=600, env=env
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_two_replicas_each_train_on_half_the_batch(result):
    assert result["replicas"] == 2
    # Global batch 8: every replica step saw 4 images.
    assert result["replica_batch"] == [4.0]
    assert result["iterations"] == 2  # 16 samples / global batch 8


def test_replicas_draw_their_own_plans(result):
    seeds, perms, lams = result["step_seeds"], result["perms"], result["lams"]
    assert len(seeds) == 2 and seeds[0] != seeds[1]
    assert perms[0] != perms[1] and sorted(perms[0]) == sorted(perms[1]) == [0, 1, 2, 3]
    assert lams[0] != lams[1]


def test_soft_patchup_trains_under_the_strategy(result):
    assert all(loss == loss and abs(loss) < 1e3 for loss in result["loss"])  # finite
    assert result["soft_change"] > 1e-5


def test_a_patchup_step_is_the_mean_of_the_replica_steps(result):
    """One mirrored step equals, on one device, one step on the mean of the two
    half-batch losses, each under the plan its replica draws."""
    assert result["by_hand_positions"] and all(
        len(p) == 1 for p in result["by_hand_positions"])  # both halves mixed
    assert result["patchup_step_vs_by_hand"] < 1e-5


def test_loss_scaling_matches_one_device(result):
    """A vanilla step (no randomness, no BN) on 2 x 4 images equals a step on
    8 images on one device."""
    assert result["vanilla_change"] > 1e-3  # the step is large enough to tell
    assert result["vanilla_vs_single"] < 1e-5


GLOBAL_METHODS = ("soft_patchup", "manifold_mixup", "cutout", "hard_patchup")


def test_global_pairing_draws_one_plan_with_partners_from_both_replicas(result):
    for method in GLOBAL_METHODS:
        first, second = result["global"][method]["perms"]
        assert first == second and sorted(first) == list(range(8)), method
        halves = [set(first[:4]), set(first[4:])]  # the partners of each replica's images
        assert all(h & {0, 1, 2, 3} and h & {4, 5, 6, 7} for h in halves), (method, first)


@pytest.mark.parametrize("method", GLOBAL_METHODS)
def test_a_global_pairing_step_on_two_replicas_is_the_one_device_step(result, method):
    """Two steps of 2 x 4 images (no BN) equal two steps on one device with
    the whole batches of 8: the mixed tensors are gathered across replicas
    and the gradients flow back through the gather."""
    assert result["global"][method]["change"] > 1e-3
    assert result["global"][method]["vs_single"] < 1e-6
