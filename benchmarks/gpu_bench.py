"""GPU throughput of patchup_tf (and the PyTorch original's step), within a time budget.

Run by `benchmarks/gpu.sh` (see there). Measures img/s of the training step
on one GPU for PreActResNet18 and WRN-28-10, per method (vanilla, soft and
hard PatchUp, mixup), in float32, mixed_bfloat16 and mixed_bfloat16 + XLA
(then float32 + XLA if time is left), and the original's float32 step when
torch is importable; writes `gpu_results.json` and `gpu_results.md` to the
output folder.

Each group of configurations (one arch, precision and XLA setting) runs in
its own worker process (`python -m patchup_tf.benchmark --_worker`, or the
original's `benchmarks/torch_original/worker.py`), one group at a time, and
within it one configuration at a time, each with a time limit
(`--config_timeout`): a configuration that fails or runs out of time gets an
error row, its worker is replaced and the next one starts. The groups run in
priority order and what no longer fits in the budget (`--budget`, default
420 s) is reported as skipped, so the whole run ends in time. Timing: after a warm-up
(trace, compile and `--warmup` steps, not timed), `--windows` windows of
`--steps` steps each, each window ended by a host sync; the median window.

This script imports neither TensorFlow nor torch itself, so it runs (and
reports) even where one of them is missing.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

METHODS = ("vanilla", "soft_patchup", "hard_patchup", "mixup")
# The paper's options (patchup_tf.rules), for the original's step, in case
# patchup_tf cannot be imported here.
PAPER_OPTIONS = {
    "vanilla": {},
    "soft_patchup": {"gamma": 0.75, "patchup_prob": 1.0, "alpha": 2.0, "k": 2,
                     "loss_params": [1.0, 1.0]},
    "hard_patchup": {"gamma": 0.5, "patchup_prob": 0.7, "alpha": 2.0, "k": 2,
                     "loss_params": [1.0, 1.0]},
    "mixup": {"alpha": 1.0},
}


def load_benchmark_module():
    """`patchup_tf/benchmark.py` without the package's `__init__` (no TensorFlow)."""
    path = os.path.join(ROOT, "patchup_tf", "benchmark.py")
    spec = importlib.util.spec_from_file_location("patchup_benchmark_standalone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan(archs, torch_ok, methods=METHODS, impls=("tf", "torch")):
    """The groups in priority order: `(impl, arch, precision, xla, methods)`.

    Per arch: float32, mixed_bfloat16, (the original, PreActResNet18 only),
    mixed_bfloat16 + XLA; then float32 + XLA for every arch.
    """
    groups = []
    for arch in archs:
        groups.append(("tf", arch, "float32", False, methods))
        groups.append(("tf", arch, "mixed_bfloat16", False, methods))
        if torch_ok and arch == "preactresnet18":
            groups.append(("torch", arch, "float32", False, methods))
        groups.append(("tf", arch, "mixed_bfloat16", True, methods))
    for arch in archs:
        groups.append(("tf", arch, "float32", True, methods))
    return [g for g in groups if g[0] in impls]


def nvidia_smi():
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"


def package_version(name):
    try:
        import importlib.metadata as md

        return md.version(name)
    except Exception:  # noqa: BLE001
        return None


def run_group(bench, group, *, args, end, torch_python, log):
    """Runs one group's configs one at a time in a worker; returns their rows.

    Each config gets at most `--config_timeout` seconds (and never past
    `end`) to build, warm up and run its windows; one that fails or runs out
    of time gets an error row, the worker is replaced and the group goes on.
    Configs that no longer fit (less than `--min_config_s` left) are skipped.
    """
    impl, arch, precision, xla, methods = group
    configs = [bench.make_config(arch, m, precision, xla, impl=bench.IMPL if impl == "tf"
                                 else bench.TORCH_IMPL, batchnorm="fused" if impl == "tf" else None)
               for m in methods]
    if impl == "torch":
        try:
            configs = bench.torch_job_configs(configs)
        except Exception:  # noqa: BLE001 - patchup_tf not importable here
            configs = [{**c, "options": PAPER_OPTIONS.get(c["method"], {}), "num_classes": 10}
                       for c in configs]
        command = bench.torch_worker_command(torch_python)
    else:
        command = bench.tf_worker_command()
    env = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    label = f"{impl} {arch} {precision} xla={'on' if xla else 'off'}"
    job = {"configs": configs, "batch_size": args.batch_size, "warmup": args.warmup,
           "timer": "function", "lazy": True}
    log(f"[group] {label}: {len(configs)} configs, {end - time.monotonic():.0f} s of budget left")
    rows, worker = [], None
    try:
        for i, c in enumerate(configs):
            if end - time.monotonic() < args.min_config_s:
                rows.append({**c, "skipped": "time budget"})
                log(f"    {c['method']}: skipped (time budget)")
                continue
            try:
                if worker is None:  # its start (imports, device set-up) has its own limit
                    up = time.monotonic()
                    worker = bench.Worker(command, job, env=env, name=label, log=log)
                    info = worker.ready(max(1.0, min(args.start_timeout,
                                                     end - time.monotonic()))).get("info", {})
                    log(f"    worker up in {time.monotonic() - up:.1f} s: {info}")
            except (bench.WorkerError, OSError, ValueError, KeyError) as e:
                log(f"    worker failed to start: {e}")
                rows += [{**other, "error": f"worker failed to start: {str(e)[:300]}"}
                         for other in configs[i:]]
                if worker is not None:
                    worker.kill()
                worker = None
                break
            start = time.monotonic()
            deadline = min(end, start + args.config_timeout)

            def left():
                return max(1.0, deadline - time.monotonic())

            try:
                status = worker.build(i, left())
                if not status.get("ok"):
                    rows.append({**c, "error": status.get("error")})
                    log(f"    {c['method']}: FAILED {status.get('error')}")
                    continue
                rates = [worker.window(i, args.steps, left())["img_per_s"]
                         for _ in range(args.windows)]
                row = worker.result(i, left())
                row.update({"img_per_s": statistics.median(rates), "img_per_s_windows": rates,
                            "step_ms": 1000.0 * args.batch_size / statistics.median(rates),
                            "config_s": round(time.monotonic() - start, 1)})
                rows.append(row)
                log(f"    {c['method']}: {row['img_per_s']:.0f} img/s (build {status['build_s']} s, "
                    f"warm-up {status['warmup_s']} s, {row['config_s']} s in all)")
            except (bench.WorkerError, OSError, ValueError, KeyError) as e:
                rows.append({**c, "error": str(e)[:400]})
                log(f"    {c['method']}: FAILED {e}")
                if worker is not None:
                    worker.kill()
                worker = None  # a fresh one for the next config
    finally:
        if worker is not None:
            try:
                worker.finish(10)
            except (bench.WorkerError, OSError, ValueError):
                pass
            worker.kill()
    return rows


def add_ratios(rows):
    ok = [r for r in rows if r.get("img_per_s")]
    for r in ok:
        base = [v for v in ok if v["method"] == "vanilla" and v["impl"] == r["impl"]
                and v["arch"] == r["arch"] and v["precision"] == r["precision"]
                and v["xla"] == r["xla"]]
        if base:
            r["x_vanilla"] = r["img_per_s"] / base[0]["img_per_s"]
        ref = [v for v in ok if v["impl"] == "torch_original" and v["method"] == r["method"]
               and v["arch"] == r["arch"]]
        if ref and r["impl"] != "torch_original":
            r["x_torch"] = r["img_per_s"] / ref[0]["img_per_s"]
    return rows


def markdown(results):
    m = results["machine"]
    lines = [
        f"# patchup_tf GPU benchmark, {m['date']}",
        "",
        f"GPU: {m.get('nvidia_smi') or 'unknown'}; host CPU: {m['cpu']}; TF {m.get('tensorflow')}, "
        f"Keras {m.get('keras')}, torch {m.get('torch')}; batch {results['settings']['batch_size']}, "
        f"{results['settings']['windows']} windows x {results['settings']['steps']} steps after "
        f"{results['settings']['warmup']} warm-up steps (median window). "
        f"Total {results['wall_s']:.0f} s.",
        "",
        "| arch | impl | method | precision | XLA | img/s | ms/step | x vanilla | x original | "
        "GPU peak MiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        note = r.get("error") or r.get("skipped") or ""
        note = str(note).replace("|", "/")[:120]
        lines.append(
            f"| {r['arch']} | {r['impl']} | {r['method']} | {r['precision']} | "
            f"{'on' if r['xla'] else 'off'} | {_f(r.get('img_per_s'), '.0f')} | "
            f"{_f(r.get('step_ms'), '.1f')} | {_f(r.get('x_vanilla'), '.3f')} | "
            f"{_f(r.get('x_torch'), '.2f')} | {_f(r.get('gpu_peak_mb'), '.0f')} | {note} |")
    lines += ["", "x vanilla: img/s over the same impl/arch/precision/XLA's vanilla; x original: "
              "img/s over the PyTorch original's same method (float32) on the same GPU."]
    return "\n".join(lines) + "\n"


def _f(value, spec):
    return "-" if value is None else format(value, spec)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_bench_out"))
    p.add_argument("--archs", nargs="+", default=["preactresnet18", "wrn28_10"])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget", type=float, default=float(os.environ.get("GPU_BENCH_BUDGET_S", 420)),
                   help="seconds for the whole run; groups that no longer fit are skipped")
    p.add_argument("--config_timeout", type=float, default=100.0,
                   help="seconds one config may take at most (worker start, build, trace, "
                        "XLA compile, warm-up, windows)")
    p.add_argument("--start_timeout", type=float, default=90.0,
                   help="seconds a worker process may take to start (imports, GPU set-up)")
    p.add_argument("--min_config_s", type=float, default=25.0,
                   help="a config starts only with at least this much budget left")
    p.add_argument("--impls", nargs="+", default=["tf", "torch"], choices=("tf", "torch"),
                   help="patchup_tf (tf) and/or the PyTorch original (torch)")
    p.add_argument("--torch_python", default=None)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.monotonic()
    end = start + args.budget
    log_file = open(os.path.join(args.out, "gpu_log.txt"), "w")

    def log(msg):
        line = f"[{time.monotonic() - start:6.1f}s] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    bench = load_benchmark_module()
    torch_ok, torch_detail = bench.torch_status(args.torch_python)
    log(f"torch: {'yes' if torch_ok else 'no'} ({torch_detail})")
    tf_version = package_version("tensorflow")
    log(f"tensorflow: {tf_version or 'not installed'}")
    machine = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "nvidia_smi": nvidia_smi(), "cpu": bench.cpu_model(), "cores": bench.cpu_count(),
               "python": platform.python_version(), "tensorflow": tf_version,
               "keras": package_version("keras"), "torch": package_version("torch")}
    log(f"machine: {machine}")
    rows = []
    for group in plan(args.archs, torch_ok, tuple(args.methods), tuple(args.impls)):
        rows += run_group(bench, group, args=args, end=end, torch_python=args.torch_python,
                          log=log)
        partial = {"machine": machine, "settings": vars(args), "rows": add_ratios(list(rows)),
                   "wall_s": time.monotonic() - start}
        with open(os.path.join(args.out, "gpu_results.json"), "w") as f:
            json.dump(partial, f, indent=2)
    results = {"machine": machine, "settings": vars(args), "rows": add_ratios(rows),
               "wall_s": time.monotonic() - start}
    with open(os.path.join(args.out, "gpu_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = markdown(results)
    with open(os.path.join(args.out, "gpu_results.md"), "w") as f:
        f.write(table)
    print(table, flush=True)
    log(f"done in {time.monotonic() - start:.0f} s; wrote {args.out}/gpu_results.json, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
