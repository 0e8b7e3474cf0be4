"""`MixingModel.fit` scaled out on JAX with `keras.distribution`, TensorFlow
blocked: `DataParallel` over two CPU devices of one process
(`--xla_force_host_platform_device_count=2`), and two local processes
joined by `keras.distribution.initialize` on 127.0.0.1 training one model.

The runs happen in fresh interpreters (`tests/helpers/jax_scale_out.py`),
all three at once; the assertions are here.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.test_backends import _JAX_FLAGS

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers", "jax_scale_out.py")
TIMEOUT_S = 900


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs():
    """`{"devices": result, "process 0": result, "process 1": result}`."""
    env = {**os.environ, "XLA_FLAGS": _JAX_FLAGS, "CUDA_VISIBLE_DEVICES": "",
           "JAX_PLATFORMS": "cpu"}
    port = str(_free_port())
    commands = {"devices": ["devices"], "process 0": ["process", "0", port],
                "process 1": ["process", "1", port]}
    procs = {name: subprocess.Popen([sys.executable, SCRIPT, *args], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for name, args in commands.items()}
    results = {}
    for name, proc in procs.items():
        try:
            output, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in procs.values():
                other.kill()
            output = proc.communicate()[0] + f"\n(killed after {TIMEOUT_S} s)"
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, f"{name}:\n{output[-6000:]}"
        results[name] = json.loads(lines[-1][len("RESULT "):])
    return results


@pytest.mark.parametrize("name", ["devices", "process 0", "process 1"])
def test_the_step_sees_two_shards(runs, name):
    assert runs[name]["devices"] == 2 and runs[name]["shards"] == 2
    assert runs[name]["processes"] == (1 if name == "devices" else 2)


def test_replica_pairing_keeps_partners_in_each_devices_shard(runs):
    for perm in runs["devices"]["perms"]["replica"]:
        assert sorted(perm[:4]) == [0, 1, 2, 3] and sorted(perm[4:]) == [4, 5, 6, 7], perm


def test_global_pairing_takes_partners_from_both_shards(runs):
    perms = runs["devices"]["perms"]["global"]
    assert all(sorted(perm) == list(range(8)) for perm in perms)
    crossing = [sum(p >= 4 for p in perm[:4]) for perm in perms]
    assert any(crossing), perms


def test_a_global_pairing_fit_on_two_devices_is_the_one_device_fit(runs):
    result = runs["devices"]["vs_one_device"]
    assert result["global"] < 1e-6
    # "replica" pairs within shards: another pairing than one device's
    assert result["replica"] > 1e-4


def test_two_processes_train_one_model_as_one_process_on_two_devices(runs):
    for pairing in ("replica", "global"):
        key = f"weights_{pairing}"
        values = [runs[name][key] for name in ("devices", "process 0", "process 1")]
        assert values[1] == values[2], (pairing, values)
        assert values[1] == pytest.approx(values[0], abs=1e-5), (pairing, values)
    assert runs["process 0"]["vs_one_device"]["global"] < 1e-6
