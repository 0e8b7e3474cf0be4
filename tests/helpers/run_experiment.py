"""Runs `scripts/train.py` with test hooks, for `tests/test_multi_worker.py`.

    python tests/helpers/run_experiment.py [--tiny] [--audit LOG --audit_root DIR]
        [--pause_at_step N --pause_marker FILE] -- <scripts/train.py flags>

* `--tiny`: `patchup_tf.models.build` returns a tiny `MixingModel` (channels
  4..8, mixing points 1..4) instead of `--arch`, so a whole experiment
  (folder, checkpoints, resume, report, export) takes seconds.
* `--audit LOG`: a Python audit hook appends to LOG (JSON lines) every
  file/folder creation, write, rename and removal under `--audit_root`;
  it shows what a non-chief worker wrote (it must write nothing).
* `--pause_at_step N` (with `--tiny`): the training step at global step N
  (`optimizer.iterations`) touches FILE and blocks, so the test can SIGKILL
  the process mid-epoch at a known point, like a preemption.
"""

import argparse
import faulthandler
import json
import os
import runpy
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
faulthandler.register(signal.SIGUSR1)  # the test dumps the stacks of a hung worker
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.rename": 2, "os.mkdir": 1, "os.remove": 1, "os.rmdir": 1,
                "shutil.rmtree": 1, "os.symlink": 2, "os.link": 2, "os.truncate": 1,
                "os.chmod": 1}


def install_audit(log_path, root):
    root = os.path.realpath(root)
    log = open(log_path, "a", buffering=1)

    def under_root(path):
        if isinstance(path, int) or path is None:
            return False
        try:
            path = os.fsdecode(path)
        except TypeError:
            return False
        return os.path.realpath(path).startswith(root + os.sep) or os.path.realpath(path) == root

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and under_root(path):
                log.write(json.dumps({"event": event, "path": os.fsdecode(path)}) + "\n")
        elif event in _PATH_EVENTS:
            paths = [a for a in args[:_PATH_EVENTS[event]] if under_root(a)]
            if paths:
                log.write(json.dumps({"event": event, "path": [os.fsdecode(p) for p in paths]})
                          + "\n")

    sys.addaudithook(hook)


def install_tiny(pause_at_step=None, pause_marker=None):
    import keras
    import tensorflow as tf

    import patchup_tf.models
    from tests.helpers.tiny import tiny_layers
    from patchup_tf.training import MixingModel

    @keras.saving.register_keras_serializable(package="patchup_tests")
    class PausingModel(MixingModel):
        def train_step(self, data):
            if pause_at_step is not None:
                def pause(step):
                    if int(step) == pause_at_step:
                        with open(pause_marker, "w") as f:
                            f.write(str(int(step)))
                        while True:  # until SIGKILL
                            time.sleep(1)
                    return 0

                tf.py_function(pause, [self.optimizer.iterations], [tf.int32])
            return super().train_step(data)

    def build(arch, num_classes, method="vanilla", seed=None, **options):
        inputs, logits = tiny_layers(num_classes)
        return PausingModel(inputs, logits, method=method, method_options=options, seed=seed)

    patchup_tf.models.build = build


def main():
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--audit")
    parser.add_argument("--audit_root")
    parser.add_argument("--pause_at_step", type=int)
    parser.add_argument("--pause_marker")
    args = parser.parse_args(argv[:split])
    if args.audit:
        install_audit(args.audit, args.audit_root)
    if args.tiny:
        install_tiny(args.pause_at_step, args.pause_marker)
    sys.argv = [os.path.join(ROOT, "scripts", "train.py")] + argv[split + 1:]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
