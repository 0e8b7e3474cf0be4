"""GPU throughput of patchup_tf (and the PyTorch original's step), within a time budget.

Run by `benchmarks/gpu.sh` (see there): `benchmarks.run` one configuration at
a time within `--budget` seconds, each in at most `--config_timeout` (worker
start, build, trace, XLA compile, warm-up, windows; one that fails or runs
out of time gets an error row and a fresh worker; what no longer fits is
skipped), for PreActResNet18 and WRN-28-10 x {vanilla, soft and hard
PatchUp, mixup} x {float32, mixed_bfloat16} x XLA {off, on} on the Keras
backend `KERAS_BACKEND` names (JAX needs no TensorFlow), and the original's
float32 step when `--torch_original PATH` names a checkout of it and torch is
importable. Writes `gpu_results.json`, `gpu_results.md` (the report) and
`gpu_log.txt` to `--out`. This process imports neither TensorFlow nor torch.
"""

import argparse
import os
import sys
import time

from benchmarks import run
from benchmarks import torch_original as original

METHODS = ("vanilla", "soft_patchup", "hard_patchup", "mixup")


def _parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_bench_out"))
    p.add_argument("--archs", nargs="+", default=["preactresnet18", "wrn28_10"])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    for flag, default in (("--batch_size", 100), ("--steps", 10), ("--windows", 3),
                          ("--warmup", 3)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--budget", type=float, default=float(os.environ.get("GPU_BENCH_BUDGET_S", 420)),
                   help="seconds for the whole run; configs that no longer fit are skipped")
    p.add_argument("--config_timeout", type=float, default=100.0,
                   help="seconds one config may take at most")
    p.add_argument("--impls", nargs="+", default=["tf", "torch"], choices=("tf", "torch"),
                   help="patchup_tf (tf, on the Keras backend KERAS_BACKEND names) and/or the "
                        "PyTorch original (torch)")
    p.add_argument("--torch_original", metavar="PATH", help="a checkout of the original")
    p.add_argument("--torch_python")
    return p


def main(argv=None):
    from patchup_tf.files import write_json, write_text

    args = _parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.monotonic()
    with open(os.path.join(args.out, "gpu_log.txt"), "w") as log_file:
        def log(message):
            line = f"[{time.monotonic() - start:6.1f}s] {message}"
            print(line, flush=True)
            log_file.write(line + "\n")

        problem = original.check_checkout(args.torch_original) if "torch" in args.impls else None
        ok, detail = (False, problem) if problem else original.torch_status(args.torch_python)
        log(f"torch: {'yes' if ok else 'no'} ({detail})")
        results = run.run_benchmark(
            log=log, archs=tuple(args.archs), methods=tuple(args.methods) * ("tf" in args.impls),
            precisions=("float32", "mixed_bfloat16"), xla=("off", "on"),
            backends=(os.environ.get("KERAS_BACKEND", "tensorflow"),),
            batch_size=args.batch_size, steps=args.steps, windows=args.windows,
            warmup=args.warmup, pipelines=(), against_torch=ok,
            torch_original=args.torch_original, torch_python=args.torch_python,
            torch_methods=tuple(m for m in args.methods if m in original.METHODS),
            memory_methods=(), timeout=args.config_timeout, budget=args.budget)
        results["settings"]["gpu_bench"] = vars(args)
        write_json(os.path.join(args.out, "gpu_results.json"), results)
        table = run.format_table(results)
        write_text(os.path.join(args.out, "gpu_results.md"), table + "\n")
        print(table, flush=True)
        log(f"done in {time.monotonic() - start:.0f} s; wrote {args.out}/gpu_results.json, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
