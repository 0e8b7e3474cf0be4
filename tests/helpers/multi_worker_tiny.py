"""One worker of a multi-worker soft PatchUp run of a tiny `MixingModel`.

`tests/test_multi_worker.py` starts one process per worker with `TF_CONFIG`
set; each trains with `patchup_tf.app.experiment.distributed.train_loop` under
`MultiWorkerMirroredStrategy` and dumps to `OUT/worker_<index>.npz`: its
trainable weights, its BN moving statistics, and per step what its replica
saw (batch size, step seed, the plan's permutation, the sum of its images),
plus the logs the callbacks received. `--pairing global` mixes the global batch
(no batch norm, so that the run equals one host's). The chief (worker 0) also saves a
`.keras` file and a SavedModel alone, which must not need the other worker.
"""

import argparse
import faulthandler
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
faulthandler.register(signal.SIGUSR1)  # the test dumps the stacks of a hung worker
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from patchup_tf.app.experiment.distributed import train_loop  # noqa: E402
from patchup_tf.app.experiment.run import is_chief  # noqa: E402
from patchup_tf.files import export_saved_model, save_keras  # noqa: E402
from patchup_tf.optimizer import TorchSGD  # noqa: E402
from patchup_tf.training import MixingModel  # noqa: E402
from tests.helpers.tiny import data, tiny_model  # noqa: E402


class Recorder(MixingModel):
    """Records, per step, what this replica trained on (via a host callback)."""

    records = []

    def train_step(self, data):
        x = keras.utils.unpack_x_y_sample_weight(data)[0]
        perm = self.draw_plan(x)["perm"]  # the same draw train_step makes

        def record(batch, seed, perm, total, step):
            Recorder.records.append({
                "batch": int(batch), "seed": seed.numpy().tolist(),
                "perm": perm.numpy().tolist(), "sum": float(total), "step": int(step),
            })
            return 0

        tf.py_function(record, [tf.shape(x)[0], self.step_seed(), perm,
                                tf.reduce_sum(x), self.optimizer.iterations], [tf.int32])
        return super().train_step(data)


class LogCatcher(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.events = []

    def on_epoch_begin(self, epoch, logs=None):
        lr = float(self.model.optimizer.learning_rate.numpy())
        self.events.append(["epoch_begin", epoch, lr])

    def on_train_batch_end(self, batch, logs=None):
        self.events.append(["batch_end", batch, sorted(logs)])

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(["epoch_end", epoch, {k: float(v) for k, v in logs.items()}])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pairing", default="replica")  # "global": no BN (one-host equality)
    args = parser.parse_args()
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    x, y = data(args.batch * args.steps, seed=1, one_hot=True)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch, drop_remainder=True)
    dataset = dataset.repeat()
    with strategy.scope():
        model = tiny_model("soft_patchup", seed=7, cls=Recorder, k=4, pairing=args.pairing,
                           batchnorm=args.pairing == "replica")
        model.compile(optimizer=TorchSGD(0.05))
        model.optimizer.build(model.trainable_variables)
    catcher = LogCatcher()
    train_loop(model, dataset, epochs=args.epochs, initial_epoch=0, steps_per_epoch=args.steps,
               lr_at=lambda epoch: 0.05 * (0.5 ** epoch), callbacks=[catcher],
               strategy=strategy, verbose=0)

    chief = is_chief()
    if chief:  # alone: must not wait for the other worker
        save_keras(os.path.join(args.out, "chief.keras"), model)
        export_saved_model(os.path.join(args.out, "chief_saved_model"), model)
    arrays = {f"w{i}": v.numpy() for i, v in enumerate(model.trainable_variables)}
    bn = [v for v in model.non_trainable_variables if "moving" in v.path]
    arrays.update({f"bn{i}": v.numpy() for i, v in enumerate(bn)})
    arrays["info"] = np.array(json.dumps({
        "index": task["index"], "chief": chief, "records": Recorder.records,
        "events": catcher.events, "replicas": strategy.num_replicas_in_sync,
        "iterations": int(model.optimizer.iterations.numpy()),
    }))
    np.savez(os.path.join(args.out, f"worker_{task['index']}.npz"), **arrays)
    print("DONE", task["index"], flush=True)


if __name__ == "__main__":
    main()
