"""`MixingModel` under `keras.distribution` on JAX: one process over two CPU
devices (`DataParallel`), or one of two processes joined by
`keras.distribution.initialize` on 127.0.0.1.

Run by `tests/test_jax_scale_out.py` in a fresh interpreter (the device count
and the process group must be set before JAX starts), with TensorFlow
blocked. Prints one JSON line (prefixed `RESULT `) for the assertions there.

    python tests/helpers/jax_scale_out.py devices
    python tests/helpers/jax_scale_out.py process <id> <port>
"""

import json
import os
import sys

sys.modules["tensorflow"] = None  # the library never needs it on JAX
os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MODE = sys.argv[1]
if MODE == "devices":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

if MODE == "process":
    keras.distribution.initialize(f"127.0.0.1:{sys.argv[3]}", num_processes=2,
                                  process_id=int(sys.argv[2]))

from patchup_tf.optimizer import TorchSGD  # noqa: E402
from patchup_tf.training import MixingModel  # noqa: E402
from tests.any_backend.test_model import batch, micro_layers  # noqa: E402

BATCH = 8


def model(method, pairing, seed=3, lr=0.05):
    options = {"pairing": pairing}
    if method != "mixup":
        options.update(k=2, patchup_prob=1.0)
    net = MixingModel(*micro_layers(), method=method, method_options=options, seed=seed)
    net.compile(optimizer=TorchSGD(lr))
    return net


def fit_weights(net, x, y, epochs=2):
    """Trains on global batches of `BATCH`; with several processes each
    feeds its own part of every global batch (rows `p*n .. (p+1)*n`)."""
    processes = jax.process_count() if keras.distribution.distribution() else 1
    if processes > 1:
        part = BATCH // processes
        rows = [b + jax.process_index() * part + i
                for b in range(0, len(x), BATCH) for i in range(part)]
        x, y = x[rows], y[rows]
    net.fit(x, y, batch_size=BATCH // processes, epochs=epochs, shuffle=False, verbose=0)
    return [np.asarray(w) for w in net.get_weights()]


def perms(pairing):
    """The step's partners, as the step draws them, for a few steps."""
    net = model("soft_patchup", pairing)
    images = np.zeros((BATCH, 16, 16, 3), "float32")
    return [np.asarray(net.draw_plan(images, net.step_seed(ops.convert_to_tensor(s, "int64")))
                       ["perm"]).tolist() for s in range(6)]


def single_device(method, pairing, x, y):
    """The same fit without a distribution (one device)."""
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        return fit_weights(model(method, pairing), x, y)
    finally:
        keras.distribution.set_distribution(distribution)


def main():
    devices = keras.distribution.list_devices()
    # Several processes: each hands `fit` its own part of the data.
    keras.distribution.set_distribution(keras.distribution.DataParallel(
        devices=devices, auto_shard_dataset=jax.process_count() == 1))
    x, y = batch(2 * BATCH, seed=1)
    out = {"devices": len(devices), "processes": jax.process_count()}
    from patchup_tf import backend

    out["shards"] = backend.current().shards_in_batch()
    out["perms"] = {pairing: perms(pairing) for pairing in ("replica", "global")}
    gaps = {}
    for pairing in ("replica", "global"):
        parallel = fit_weights(model("soft_patchup", pairing), x, y)
        alone = single_device("soft_patchup", pairing, x, y)
        gaps[pairing] = max(float(np.abs(a - b).max()) for a, b in zip(parallel, alone))
        out[f"weights_{pairing}"] = float(sum(np.sum(w, dtype=np.float64) for w in parallel))
    out["vs_one_device"] = gaps
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
