"""Benchmark worker for the PyTorch original's training step.

Started by `patchup_tf.benchmark` (`--against-torch`, and `benchmarks/gpu.sh`);
it speaks the benchmark's worker protocol (one JSON object per line): reads
the job on stdin, builds and warms one `preactresnet18` per config (the
vendored original, `patchup_original.py`), answers `{"ready": [...]}`, then
times `{"cmd": "window", "config": i, "steps": n}` requests and answers
`{"cmd": "finish"}` with the results. With `"lazy": true` it builds a
config only when asked (`{"cmd": "build", "config": i}`) and frees it after
`{"cmd": "result", "config": i}`. It imports neither TensorFlow nor
patchup_tf, so its CPU time and memory are the original's alone.

The step is `patchup_original.train_step`: main.py's loop body for one batch
of in-memory tensors (the original's DataLoader is not part of it), with the
method's options as patchup_tf's paper settings give them (`options` in each
config). It runs in float32, as the original does.
"""

import json
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

TRAIN_MODES = {  # patchup_tf method -> (main.py --train, --patchup_type)
    "vanilla": ("vanilla", None),
    "soft_patchup": ("patchup", "soft"),
    "hard_patchup": ("patchup", "hard"),
    "mixup": ("mixup", None),
    "manifold_mixup": ("manifold_mixup", None),
    "cutmix": ("cutmix", None),
}


def _status_mb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class TorchBench:
    """One config: the original's PreActResNet18 and SGD, warmed up."""

    def __init__(self, config, batch_size, warmup, seed=0, distinct=2):
        import numpy as np
        import torch

        import patchup_original as po

        self.torch, self.po = torch, po
        self.config = {**config, "batch_size": batch_size}
        if config.get("arch", "preactresnet18") != "preactresnet18":
            raise ValueError(f"the vendored original has preactresnet18 only, not {config['arch']}")
        if config.get("precision", "float32") != "float32":
            raise ValueError("the original trains in float32 only")
        if config["method"] not in TRAIN_MODES:
            raise ValueError(f"the original has no method {config['method']!r}")
        self.train, patchup_type = TRAIN_MODES[config["method"]]
        options = dict(config.get("options") or {})
        self.kwargs = {
            "train": self.train,
            "patchup_type": po.PatchUpMode.HARD if patchup_type == "hard" else po.PatchUpMode.SOFT,
            "patchup_prob": options.get("patchup_prob", 0.7),
            "alpha": options.get("alpha", 2.0 if patchup_type else 1.0),
            "k": options.get("k", 2),
            "loss_params": tuple(options.get("loss_params", (1, 1))),
            "cutmix_prob": options.get("cutmix_prob", 0.5),
            "num_classes": config.get("num_classes", 10),
        }
        if self.train == "patchup":
            self.kwargs["alpha"] = None  # PatchUp draws its own lam ~ Beta(2, 2)
        if po.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        start = time.perf_counter()
        self.model = po.preactresnet18(self.kwargs["num_classes"],
                                       gamma=options.get("gamma", 0.9)).to(po.device)
        self.model.train()
        self.optimizer = po.make_optimizer(self.model)
        self.batch_size = batch_size
        self.images = torch.randn(distinct, batch_size, 3, 32, 32, device=po.device)
        self.labels = torch.randint(0, self.kwargs["num_classes"], (distinct, batch_size),
                                    device=po.device)
        self.index = 0
        self.build_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(max(1, warmup)):
            self.step()
        self._sync()
        self.warmup_s = time.perf_counter() - start
        self.windows, self.cpu_step, self.cpu_util, self.peak_rss = [], [], [], None

    def _sync(self):
        if self.po.device.type == "cuda":
            self.torch.cuda.synchronize()

    def step(self):
        self.index = (self.index + 1) % len(self.images)
        # CutMix writes into its input, as in the original: a copy keeps
        # the stored batches unchanged.
        images = self.images[self.index]
        if self.train == "cutmix":
            images = images.clone()
        return self.po.train_step(self.model, self.optimizer, images, self.labels[self.index],
                                  **self.kwargs)

    def window(self, steps):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        self._sync()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        throughput = steps * self.batch_size / wall
        self.windows.append(throughput)
        self.cpu_step.append(cpu / steps)
        self.cpu_util.append(cpu / wall)
        return throughput, wall, cpu

    def result(self):
        median = statistics.median(self.windows) if self.windows else None
        row = {**self.config, "impl": "torch_original", "img_per_s": median,
               "step_ms": 1000.0 * self.batch_size / median if median else None,
               "img_per_s_windows": self.windows,
               "cpu_util_windows": [round(u, 2) for u in self.cpu_util],
               "cpu_s_per_step": statistics.median(self.cpu_step) if self.cpu_step else None,
               "cpu_s_per_step_windows": self.cpu_step,
               "build_s": round(self.build_s, 2), "warmup_s": round(self.warmup_s, 2),
               "peak_rss_mb": self.peak_rss, "retraces": None,
               "device": str(self.po.device)}
        if self.po.device.type == "cuda":
            row["gpu_peak_mb"] = round(self.torch.cuda.max_memory_allocated() / 2**20, 1)
        return row


def _send(stream, obj):
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


def _error_text(e):
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {(lines or [''])[0][:400]}"


def main():
    writer = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr, not into the protocol
    job = json.loads(sys.stdin.readline())
    import torch

    if job.get("intra_threads"):
        torch.set_num_threads(int(job["intra_threads"]))
    benches, ready, errors = {}, [], {}

    def build(i):
        try:
            benches[i] = TorchBench(job["configs"][i], job["batch_size"], job["warmup"])
            return {"ok": True, "build_s": round(benches[i].build_s, 2),
                    "warmup_s": round(benches[i].warmup_s, 2)}
        except Exception as e:  # noqa: BLE001 - reported, the others go on
            errors[i] = _error_text(e)
            return {"ok": False, "error": errors[i]}

    if not job.get("lazy"):
        ready = [build(i) for i in range(len(job["configs"]))]
    _send(writer, {"ready": ready, "info": {
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "window":
            bench = benches[cmd["config"]]
            _reset_peak()
            throughput, wall, cpu = bench.window(cmd["steps"])
            peak = _status_mb("VmHWM")
            if peak is not None:
                bench.peak_rss = peak if bench.peak_rss is None else max(bench.peak_rss, peak)
            _send(writer, {"img_per_s": throughput, "wall_s": wall, "cpu_s": cpu,
                           "peak_rss_mb": peak})
        elif cmd["cmd"] == "build":
            _send(writer, build(cmd["config"]))
        elif cmd["cmd"] == "result":
            bench = benches.pop(cmd["config"])
            row = bench.result()
            del bench
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            _send(writer, {"result": row})
        elif cmd["cmd"] == "finish":
            results = []
            for i, config in enumerate(job["configs"]):
                if i in benches:
                    results.append(benches[i].result())
                else:
                    results.append({**config, "batch_size": job["batch_size"],
                                    "error": errors.get(i, "not built")})
            _send(writer, {"results": results, "process_peak_rss_mb": _status_mb("VmHWM")})
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
