"""The PyTorch original's training step, imported from a checkout of it
(`--torch_original PATH`, a clone of https://github.com/chandar-lab/PatchUp;
nothing of it is kept in this repository). The worker (`python -m benchmarks.torch_original
--checkout PATH`, speaking the protocol of `benchmarks.workers`) loads the
checkout's own `main.py` once per configuration, with that configuration's
command line (`--train patchup --patchup_type soft ...`, the paper's options
as patchup_tf states them), so its model, loss and training loop `train()`
run unchanged (its DataLoader is not timed; its per-step bookkeeping is).

Patched in the worker's process only (the checkout is never edited): `np.int`
(gone since NumPy 1.24) and its top-k `accuracy` (a `.view(-1)` current
PyTorch refuses; `_accuracy` gives the same percentages). The checkout's
requirements must be importable by the worker's Python (`--torch_python`).
"""

import argparse
import importlib.util
import itertools
import os
import subprocess
import sys
import time

from benchmarks.configs import TORCH_IMPL, make_config

ORIGINAL_URL = "https://github.com/chandar-lab/PatchUp"
EXPECTED_FILES = ("main.py", os.path.join("models", "preresnet.py"),
                  os.path.join("modules", "patchup.py"))
TRAIN_MODES = {  # patchup_tf method -> main.py's --train (and --patchup_type)
    **{m: ["--train", m] for m in ("vanilla", "mixup", "manifold_mixup", "cutmix")},
    **{f"{t}_patchup": ["--train", "patchup", "--patchup_type", t] for t in ("soft", "hard")}}
METHODS = tuple(TRAIN_MODES)
OPTION_FLAGS = {"block_size": "--patchup_block", **{f"{o}": f"--{o}" for o in (
    "gamma", "patchup_prob", "alpha", "k", "loss_params", "cutmix_prob")}}
_LOADS = itertools.count()  # one module name per loaded main.py
MISSING_PATH = ("--against-torch needs --torch_original PATH, a checkout of the PyTorch "
                f"original: git clone {ORIGINAL_URL} PATH, then pass --torch_original PATH.")


def check_checkout(path):
    """None if `path` looks like a checkout of the original, else what is wrong."""
    if not path:
        return MISSING_PATH
    missing = [f for f in EXPECTED_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        return (f"Invalid value received for argument `torch_original`. Expected a checkout "
                f"of {ORIGINAL_URL} (with {', '.join(EXPECTED_FILES)}). Received: "
                f"torch_original={path!r} (no {', '.join(missing)})")
    return None


def torch_status(python=None):
    """`(available, detail)`: can `python` (default: this one) import torch?"""
    if python is None:
        return (True, sys.executable) if importlib.util.find_spec("torch") else (
            False, "torch is not importable by this Python; pip install torch (or pass "
                   "--torch_python PYTHON_WITH_TORCH)")
    try:
        ok = subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0
    except OSError:
        ok = False
    return ok, python if ok else f"{python} cannot import torch"


def main_args(method, batch_size=100):
    """main.py's command line for `method` with the paper's options (patchup_tf.rules)."""
    from patchup_tf.rules import PAPER_DEFAULTS

    argv = [*TRAIN_MODES[method], "--batch_size", str(batch_size)]
    for option, value in PAPER_DEFAULTS[method].items():
        if option not in OPTION_FLAGS or (option == "alpha" and method.endswith("_patchup")):
            continue  # main.py's PatchUp draws its own lam; --alpha is Mixup's
        values = value if isinstance(value, (tuple, list)) else [value]
        argv += [OPTION_FLAGS[option], *(f"{v:g}" for v in values)]
    return argv


def job_configs(archs, methods, batch_size, num_classes=10):
    """The torch worker's configs: float32 (as the original trains), with main.py's flags."""
    return [{**make_config(arch, m, "float32", False, batchnorm=None, impl=TORCH_IMPL),
             "main_args": main_args(m, batch_size) + ["--arch", arch],
             "num_classes": num_classes}
            for arch in archs for m in methods if m in TRAIN_MODES]


def command(checkout, python=None):
    return [python or sys.executable, "-m", "benchmarks.torch_original", "--checkout",
            os.path.abspath(checkout)]


def _accuracy(output, target, topk=(1,)):
    """Top-k precision in percent per k (tensors), what the original's
    `accuracy` returns, in a form current PyTorch accepts."""
    hits = output.topk(max(topk), 1, True, True)[1].eq(target.reshape(-1, 1))
    return [hits[:, :k].float().sum() * (100.0 / target.size(0)) for k in topk]


def load_main(checkout, argv, name):
    """The checkout's `main.py` as a module (run with `argv` as its command line)."""
    import numpy as np

    if "int" not in np.__dict__:
        np.int = int  # removed in NumPy 1.24; the original's CutMix calls it
    if checkout not in sys.path:
        sys.path.insert(0, checkout)  # its `models`, `modules`, `utility`, `data_loader`
    path = os.path.join(checkout, "main.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    saved, sys.argv = sys.argv, [path, *argv]
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        raise ImportError(f"the PyTorch original at {checkout} imports `{e.name}`, which "
                          f"{sys.executable} cannot import: pip install {e.name}") from e
    except SystemExit as e:
        raise ValueError(f"the original's main.py rejected the flags {argv} "
                         f"(exit {e.code})") from e
    finally:
        sys.argv = saved
    module.accuracy = _accuracy
    return module


class TorchBench:
    """One configuration: the original's model and SGD (as its `main()` makes
    them), warmed up; a window is one call of its `train()` over `steps`
    in-memory batches."""

    def __init__(self, config, batch_size, warmup, checkout, seed=0, distinct=2):
        import numpy as np
        import torch

        self.torch, self.config = torch, {**config, "batch_size": batch_size}
        start = time.perf_counter()
        self.main = load_main(checkout, config["main_args"], f"patchup_original_{next(_LOADS)}")
        self.device, a = self.main.device, self.main.args
        a.num_classes = classes = config.get("num_classes", 10)  # as its main() sets it
        torch.manual_seed(seed)
        np.random.seed(seed)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.model = self.main.models.__dict__[a.arch](
            classes, a.dropout, False, 1, a.drop_block, a.keep_prob, a.gamma,
            a.patchup_block).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), a.learning_rate,
                                         momentum=a.momentum, weight_decay=a.decay, nesterov=True)
        self.images = torch.randn(distinct, batch_size, 3, 32, 32, device=self.device)
        self.labels = torch.randint(0, classes, (distinct, batch_size), device=self.device)
        self.log = open(os.devnull, "w")
        self.build_s, start = time.perf_counter() - start, time.perf_counter()
        self._train(max(1, warmup))()
        self._sync()
        self.warmup_s = time.perf_counter() - start

    def _train(self, steps):
        """A call of its `train()` over `steps` batches (copies for CutMix, which
        writes into its input)."""
        copy = self.main.args.train == "cutmix"
        loader = [(self.images[k % 2].clone() if copy else self.images[k % 2], self.labels[k % 2])
                  for k in range(steps)]
        return lambda: self.main.train(loader, self.model, self.optimizer, 0, self.main.args,
                                       self.log)

    def _sync(self, _=None):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def time(self, steps):
        from patchup_tf.app.steptimer import time_steps

        return time_steps(self._train(steps), steps, sync=self._sync, steps_per_call=steps)

    def result(self):
        cuda = self.device.type == "cuda"
        return {**self.config, "impl": TORCH_IMPL, "retraces": None, "device": str(self.device),
                "build_s": round(self.build_s, 2), "warmup_s": round(self.warmup_s, 2),
                "gpu_peak_mb": round(self.torch.cuda.max_memory_allocated() / 2**20, 1)
                if cuda else None}

    def close(self):
        self.model = self.optimizer = self.main = None
        self.log.close()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def _worker(checkout):
    import torch

    from benchmarks.workers import serve

    def info(job):
        commit = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"],
                                capture_output=True, text=True)
        return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                "mkldnn": bool(torch.backends.mkldnn.is_available()),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "checkout": checkout, "commit": commit.stdout.strip() or None}

    return serve(lambda c, job: TorchBench(c, job["batch_size"], job["warmup"], checkout), info)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_original")
    parser.add_argument("--checkout", required=True, help="a clone of " + ORIGINAL_URL)
    sys.exit(_worker(os.path.abspath(parser.parse_args().checkout)))
