"""The PyTorch original's training step, imported from a checkout of it.

`--torch_original PATH` is a clone of https://github.com/chandar-lab/PatchUp
(`git clone https://github.com/chandar-lab/PatchUp PATH`); nothing of it is
kept in this repository. The worker (`python -m benchmarks.torch_original
--checkout PATH`, speaking the protocol of `benchmarks.workers`) loads the
checkout's own `main.py` once per configuration, with that configuration's
command line (`--train patchup --patchup_type soft ...`, the paper's options
as patchup_tf states them), so its model (`models.preactresnet18` with its
PatchUp module), its loss and its training loop `train()` run unchanged:
a timed window is one call of `train()` over `steps` in-memory batches
(its DataLoader is not part of it; its per-step bookkeeping and its two log
lines per call are). Its optimizer is made as its `main()` makes it.

Two things a current NumPy / PyTorch needs, patched in this process only
(the checkout's files are never edited): `np.int` (removed in NumPy 1.24) is
the builtin `int`, and the top-k accuracy that `train()` computes (whose
`.view(-1)` of a transposed comparison current PyTorch refuses) is replaced
by `_accuracy`, which computes the same percentages. The checkout's own
requirements (torch, torchvision, numpy, matplotlib, seaborn) must be
importable by the worker's Python (`--torch_python`).
"""

import argparse
import importlib.util
import itertools
import os
import subprocess
import sys

from benchmarks.configs import TORCH_IMPL, error_text, make_config

ORIGINAL_URL = "https://github.com/chandar-lab/PatchUp"
EXPECTED_FILES = ("main.py", os.path.join("models", "preresnet.py"),
                  os.path.join("modules", "patchup.py"))
TRAIN_MODES = {  # patchup_tf method -> main.py's --train (and --patchup_type)
    "vanilla": ["--train", "vanilla"],
    "soft_patchup": ["--train", "patchup", "--patchup_type", "soft"],
    "hard_patchup": ["--train", "patchup", "--patchup_type", "hard"],
    "mixup": ["--train", "mixup"],
    "manifold_mixup": ["--train", "manifold_mixup"],
    "cutmix": ["--train", "cutmix"],
}
METHODS = tuple(TRAIN_MODES)
OPTION_FLAGS = {"gamma": "--gamma", "patchup_prob": "--patchup_prob", "alpha": "--alpha",
                "k": "--k", "loss_params": "--loss_params", "cutmix_prob": "--cutmix_prob",
                "block_size": "--patchup_block"}
_LOADS = itertools.count()  # one module name per loaded main.py
MISSING_PATH = ("--against-torch needs --torch_original PATH, a checkout of the PyTorch "
                f"original: git clone {ORIGINAL_URL} PATH, then pass --torch_original PATH.")


# ------------------------------------------------------------ coordinator
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
    python = python or sys.executable
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        if importlib.util.find_spec("torch") is None:
            return False, ("torch is not importable by this Python; pip install torch "
                           "(or pass --torch_python PYTHON_WITH_TORCH)")
        return True, python
    try:
        probe = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True,
                               timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{python}: {e}"
    return (True, python) if probe.returncode == 0 else (False, f"{python} cannot import torch")


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
    """The command line that starts the torch worker."""
    return [python or sys.executable, "-m", "benchmarks.torch_original", "--checkout",
            os.path.abspath(checkout)]


# ----------------------------------------------------------------- worker
def _accuracy(output, target, topk=(1,)):
    """Top-k precision in percent per k (tensors), what the original's
    `accuracy` returns, in a form current PyTorch accepts."""
    hits = output.topk(max(topk), 1, True, True)[1].eq(target.reshape(-1, 1))
    return [hits[:, :k].float().sum() * (100.0 / target.size(0)) for k in topk]


def _patch_numpy():
    import numpy as np

    if "int" not in np.__dict__:
        np.int = int  # removed in NumPy 1.24; the original's CutMix calls it


def load_main(checkout, argv, name):
    """The checkout's `main.py` as a module (run with `argv` as its command line)."""
    _patch_numpy()
    checkout = os.path.abspath(checkout)
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
    """One configuration: the original's model and SGD, warmed up (`time(steps)`)."""

    def __init__(self, config, batch_size, warmup, checkout, seed=0, distinct=2):
        import time

        import numpy as np
        import torch

        self.torch, self.batch_size = torch, batch_size
        self.config = {**config, "batch_size": batch_size}
        start = time.perf_counter()
        self.main = load_main(checkout, config["main_args"],
                              f"patchup_original_main_{next(_LOADS)}")
        self.device = self.main.device
        self.args = self.main.args
        self.args.num_classes = classes = config.get("num_classes", 10)  # as its main() sets it
        torch.manual_seed(seed)
        np.random.seed(seed)
        self.model = self._model(classes)
        self.optimizer = torch.optim.SGD(  # as its main() makes it
            self.model.parameters(), self.args.learning_rate, momentum=self.args.momentum,
            weight_decay=self.args.decay, nesterov=True)
        self.images = torch.randn(distinct, batch_size, 3, 32, 32, device=self.device)
        self.labels = torch.randint(0, classes, (distinct, batch_size), device=self.device)
        self.log = open(os.devnull, "w")
        self.build_s = time.perf_counter() - start
        start = time.perf_counter()
        self._train(self._loader(max(1, warmup)))
        self._sync()
        self.warmup_s = time.perf_counter() - start

    def _model(self, classes):
        a = self.args
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats()
        return self.main.models.__dict__[a.arch](
            classes, a.dropout, False, 1, a.drop_block, a.keep_prob, a.gamma,
            a.patchup_block).to(self.device)

    def _loader(self, steps):
        """`steps` batches; copies for CutMix, which writes into its input."""
        copy = self.args.train == "cutmix"
        return [(self.images[k % len(self.images)].clone() if copy
                 else self.images[k % len(self.images)], self.labels[k % len(self.labels)])
                for k in range(steps)]

    def _train(self, loader):
        return self.main.train(loader, self.model, self.optimizer, 0, self.args, self.log)

    def _sync(self, _=None):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def time(self, steps):
        from patchup_tf.app.steptimer import time_steps

        loader = self._loader(steps)
        return time_steps(lambda: self._train(loader), steps, sync=self._sync,
                          steps_per_call=steps)

    def result(self):
        row = {**self.config, "impl": TORCH_IMPL, "retraces": None,
               "build_s": round(self.build_s, 2), "warmup_s": round(self.warmup_s, 2),
               "device": str(self.device)}
        if self.device.type == "cuda":
            row["gpu_peak_mb"] = round(self.torch.cuda.max_memory_allocated() / 2**20, 1)
        return row

    def close(self):
        self.model = self.optimizer = self.main = None
        self.log.close()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def _commit(checkout):
    try:
        out = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _worker(checkout):
    import torch

    from benchmarks.workers import serve

    def info(job):
        return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                "mkldnn": bool(torch.backends.mkldnn.is_available()),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "checkout": checkout, "commit": _commit(checkout)}

    def make(config, job):
        try:
            return TorchBench(config, job["batch_size"], job["warmup"], checkout), None
        except Exception as e:  # noqa: BLE001 - reported, the others go on
            return None, error_text(e)

    return serve(make, info)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_original")
    parser.add_argument("--checkout", required=True, help="a clone of " + ORIGINAL_URL)
    sys.exit(_worker(os.path.abspath(parser.parse_args().checkout)))
