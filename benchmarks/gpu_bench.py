"""GPU throughput of patchup_tf (and the PyTorch original's step), within a time budget.

Run by `benchmarks/gpu.sh` (see there). Measures img/s of the training step
on one GPU for PreActResNet18 and WRN-28-10, per method (vanilla, soft and
hard PatchUp, mixup), in float32, mixed_bfloat16 and mixed_bfloat16 + XLA
(then float32 + XLA if time is left), and the original's float32 step when
torch is importable and `--torch_original PATH` names a checkout of it
(see `benchmarks.torch_original`); writes `gpu_results.json` and `gpu_results.md` to the
output folder.

Each group of configurations (one arch, precision and XLA setting) runs in
its own worker process (`benchmarks.tf_worker`, or the original's
`benchmarks.torch_original`), one group at a time, and
within it one configuration at a time, each with a time limit
(`--config_timeout`): a configuration that fails or runs out of time gets an
error row, its worker is replaced and the next one starts. The groups run in
priority order and what no longer fits in the budget (`--budget`, default
420 s) is reported as skipped, so the whole run ends in time. Timing: after a warm-up
(trace, compile and `--warmup` steps, not timed), `--windows` windows of
`--steps` steps each, each window ended by a host sync; the median window.

This process imports neither TensorFlow nor torch itself, so it runs (and
reports) even where one of them is missing: `python -m benchmarks.gpu_bench`.
"""

import argparse
import os
import sys
import time

from benchmarks import configs as cfg
from benchmarks import machine, ratios, tf_worker
from benchmarks import torch_original as original
from benchmarks.workers import Worker, WorkerError

METHODS = ("vanilla", "soft_patchup", "hard_patchup", "mixup")
ERRORS = (WorkerError, OSError, ValueError, KeyError)


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


def group_job(group, args):
    """`(command, configs, label)` of one group."""
    impl, arch, precision, xla, methods = group
    if impl == "torch":
        configs = original.job_configs([arch], methods, args.batch_size)
        command = original.command(args.torch_original, args.torch_python)
    else:
        configs = [cfg.make_config(arch, m, precision, xla) for m in methods]
        command = tf_worker.command()
    return command, configs, f"{impl} {arch} {precision} xla={'on' if xla else 'off'}"


def _time_config(worker, i, c, args, deadline, log):
    """Builds, times and frees config `i` in `worker` before `deadline`; its row."""
    start = time.monotonic()

    def left():
        return max(1.0, deadline - time.monotonic())

    status = worker.build(i, left())
    if not status.get("ok"):
        log(f"    {c['method']}: FAILED {status.get('error')}")
        return {**c, "error": status.get("error")}
    for _ in range(args.windows):
        worker.window(i, args.steps, left())
    row = {**worker.result(i, left()), "config_s": round(time.monotonic() - start, 1)}
    log(f"    {c['method']}: {row['img_per_s']:.0f} img/s (build {status['build_s']} s, "
        f"warm-up {status['warmup_s']} s, {row['config_s']} s in all)")
    return row


def _start_worker(command, job, label, args, end, log):
    up = time.monotonic()
    worker = Worker(command, job, env={"TF_FORCE_GPU_ALLOW_GROWTH": "true"}, name=label)
    try:
        info = worker.ready(max(1.0, min(args.start_timeout, end - time.monotonic())))
    except ERRORS:
        worker.kill()
        raise
    log(f"    worker up in {time.monotonic() - up:.1f} s: {info.get('info', {})}")
    return worker


def run_group(group, *, args, end, log):
    """Runs one group's configs one at a time in a worker; returns their rows.

    Each config gets at most `--config_timeout` seconds (and never past
    `end`) to build, warm up and run its windows; one that fails or runs out
    of time gets an error row, the worker is replaced and the group goes on.
    Configs that no longer fit (less than `--min_config_s` left) are skipped.
    """
    command, configs, label = group_job(group, args)
    job = {"configs": configs, "batch_size": args.batch_size, "warmup": args.warmup,
           "timer": "function", "lazy": True}
    log(f"[group] {label}: {len(configs)} configs, {end - time.monotonic():.0f} s of budget left")
    rows, worker = [], None
    for i, c in enumerate(configs):
        if end - time.monotonic() < args.min_config_s:
            rows.append({**c, "skipped": "time budget"})
            log(f"    {c['method']}: skipped (time budget)")
            continue
        try:
            worker = worker or _start_worker(command, job, label, args, end, log)
        except ERRORS as e:
            log(f"    worker failed to start: {e}")
            rows += [{**other, "error": f"worker failed to start: {str(e)[:300]}"}
                     for other in configs[i:]]
            return rows
        try:
            rows.append(_time_config(worker, i, c, args,
                                     min(end, time.monotonic() + args.config_timeout), log))
        except ERRORS as e:
            rows.append({**c, "error": str(e)[:400]})
            log(f"    {c['method']}: FAILED {e}")
            worker.kill()
            worker = None  # a fresh one for the next config
    if worker is not None:
        try:
            worker.finish(10)
        except ERRORS:
            pass
        worker.kill()
    return rows


def add_ratios(rows):
    """`ratio_to_vanilla` and `x_torch_img_per_s` (see `benchmarks.ratios`)."""
    return ratios.add_ratios({"train": rows})["train"]


def markdown(results):
    m = results["machine"]
    v = m.get("versions", {})
    st = results["settings"]
    lines = [
        f"# patchup_tf GPU benchmark, {m['date']}",
        "",
        f"GPU: {m.get('gpus') or 'unknown'}; host CPU: {m['cpu_model']}; TF {v.get('tensorflow')}, "
        f"Keras {v.get('keras')}, torch {v.get('torch')}; batch {st['batch_size']}, "
        f"{st['windows']} windows x {st['steps']} steps after {st['warmup']} warm-up steps "
        f"(median window). Total {results['wall_s']:.0f} s.",
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
            f"{_f(r.get('step_ms'), '.1f')} | {_f(r.get('ratio_to_vanilla'), '.3f')} | "
            f"{_f(r.get('x_torch_img_per_s'), '.2f')} | {_f(r.get('gpu_peak_mb'), '.0f')} | "
            f"{note} |")
    lines += ["", "x vanilla: img/s over the same impl/arch/precision/XLA's vanilla; "
              "x original: img/s over the PyTorch original's same method (float32) on the "
              "same GPU."]
    return "\n".join(lines) + "\n"


def _f(value, spec):
    return "-" if value is None else format(value, spec)


def _parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench",
                                description=__doc__.splitlines()[0])
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
    p.add_argument("--torch_original", default=None, metavar="PATH",
                   help=f"a checkout of the PyTorch original ({original.ORIGINAL_URL}); "
                        "without it the original is not timed")
    p.add_argument("--torch_python", default=None)
    return p


def _logger(path, start):
    log_file = open(path, "w")

    def log(msg):
        line = f"[{time.monotonic() - start:6.1f}s] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    return log


def _torch_ok(args, log):
    problem = original.check_checkout(args.torch_original) if "torch" in args.impls else None
    ok, detail = (False, problem) if problem else original.torch_status(args.torch_python)
    log(f"torch: {'yes' if ok else 'no'} ({detail})")
    return ok


def main(argv=None):
    from patchup_tf.files import write_json, write_text

    args = _parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.monotonic()
    end = start + args.budget
    log = _logger(os.path.join(args.out, "gpu_log.txt"), start)
    torch_ok = _torch_ok(args, log)
    info = machine.machine_info()
    log(f"machine: {info}")
    rows, results = [], None
    for group in plan(args.archs, torch_ok, tuple(args.methods), tuple(args.impls)):
        rows += run_group(group, args=args, end=end, log=log)
        results = {"machine": info, "settings": vars(args), "rows": add_ratios(list(rows)),
                   "wall_s": time.monotonic() - start}
        write_json(os.path.join(args.out, "gpu_results.json"), results)
    results = {"machine": info, "settings": vars(args), "rows": add_ratios(rows),
               "wall_s": time.monotonic() - start}
    write_json(os.path.join(args.out, "gpu_results.json"), results)
    table = markdown(results)
    write_text(os.path.join(args.out, "gpu_results.md"), table)
    print(table, flush=True)
    log(f"done in {time.monotonic() - start:.0f} s; wrote {args.out}/gpu_results.json, .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
