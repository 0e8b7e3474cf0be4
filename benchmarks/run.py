"""The speed benchmark's driver (`python -m benchmarks --tiny`): train-step
throughput per configuration (arch, method, precision, XLA, BatchNorm, input,
Keras backend), the input pipeline, memory, and the PyTorch original.

A figure is the median of `--windows` windows of `--steps` steps after a
warm-up: img/s and process CPU seconds per step (robust to other load). The
configurations live in worker processes (`benchmarks.workers`), one per Keras
backend (`KERAS_BACKEND`) and environment variant (`--worker_env`) and one per
variant of the original (`--torch_env`), their windows interleaved (default);
or each alone in a fresh process (`--isolate`); or one at a time within
`--budget` seconds. Targets and which run meets them: `benchmarks/results/`.
"""

import argparse
import os
import sys
import time

from benchmarks import configs as cfg
from benchmarks import torch_original as original
from benchmarks.machine import machine_info, peak_rss_mb
from benchmarks.report import add_ratios, format_table
from benchmarks.workers import bench_each, bench_workers
from patchup_tf.app.cli import process_settings

DEFAULTS = {
    "archs": ("preactresnet18",), "methods": cfg.DEFAULT_METHODS,
    "precisions": ("float32", "mixed_bfloat16"), "xla": ("default", "on"),
    "batchnorms": ("fused",), "inputs": ("batches",), "backends": ("tensorflow",),
    "batch_size": 100, "steps": 3, "warmup": 2, "windows": 3, "timer": "function",
    "pipelines": ("digits", "synthetic"), "pipeline_batches": 50, "synthetic_images": 10000,
    "mix_ops": False, "isolate": False, "worker_envs": (), "against_torch": False,
    "torch_original": None, "torch_python": None, "torch_methods": None, "torch_envs": (),
    "memory_methods": ("soft_patchup",), "timeout": 1800.0, "budget": None,
}
KERAS_WORKER = [sys.executable, "-m", "benchmarks.keras_worker"]


def _torch_configs(a, log):
    """`(configs, skipped)`: the original's configs, or why there are none."""
    if not a["against_torch"]:
        return [], None
    if original.check_checkout(a["torch_original"]):
        raise ValueError(original.check_checkout(a["torch_original"]))
    ok, detail = original.torch_status(a["torch_python"])
    if not ok:
        log(f"[torch] skipped: {detail}")
        return [], detail
    methods = a["torch_methods"] or [m for m in a["methods"] if m in original.METHODS]
    configs = original.job_configs(a["archs"], methods, a["batch_size"])
    return configs, None if configs else f"the original has none of {', '.join(methods)}"


def _groups(a, configs, torch_configs):
    """`(command, env, configs, name)` per worker: each Keras backend in each
    environment variant, then the original in each of its variants."""
    backends = tuple(dict.fromkeys(a["backends"]))
    groups = [(KERAS_WORKER, {**env, "KERAS_BACKEND": backend},
               [{**c, "variant": label} for c in configs if c["backend"] == backend],
               cfg.IMPL + (f"[{backend}]" if len(backends) > 1 else "")
               + (f"[{label}]" if label else ""))
              for backend in backends for label, env in cfg.env_variants(a["worker_envs"])]
    command = original.command(a["torch_original"] or ".", a["torch_python"])
    groups += [(command, env, [{**c, "variant": label} for c in torch_configs],
                cfg.TORCH_IMPL + (f"[{label}]" if label else ""))
               for label, env in cfg.env_variants(a["torch_envs"])]
    return [g for g in groups if g[2]]


def _memory(a, torch_configs, job, log):
    """Peak RSS of `memory_methods` float32 on TensorFlow, ours and the
    original's (its last variant), each alone in a fresh process."""
    methods = a["memory_methods"] if torch_configs else ()
    groups = _groups({**a, "backends": ("tensorflow",), "worker_envs": a["worker_envs"][:1],
                      "torch_envs": a["torch_envs"][-1:]},
                     [cfg.make_config(method=m, batchnorm=a["batchnorms"][0]) for m in methods],
                     original.job_configs(["preactresnet18"], methods, a["batch_size"]))
    return bench_each(groups, job, windows=1, steps=a["steps"], timeout=a["timeout"],
                      fresh=True, log=log)[0]


def _parts(a, log):
    """The input pipeline and PatchUp's own ops alone, in this process."""
    if not (a["pipelines"] or a["mix_ops"]):
        return [], []
    from benchmarks.parts import bench_mix_ops, bench_pipeline

    log("[pipeline, mixing ops]")
    pipelines = [bench_pipeline(kind, batch_size=a["batch_size"], batches=a["pipeline_batches"],
                                windows=a["windows"], synthetic_images=a["synthetic_images"])
                 for kind in a["pipelines"]]
    mix_ops = [row for precision in a["precisions"] if a["mix_ops"]
               for row in bench_mix_ops(batch_size=a["batch_size"], precision=precision,
                                        windows=max(a["windows"], 3))]
    return pipelines, mix_ops


def _train(a, configs, torch_configs, job, log):
    """`(rows, workers_info, mode)` of the runnable configs."""
    groups = _groups(a, configs, torch_configs)
    timing = {"windows": a["windows"], "steps": a["steps"], "timeout": a["timeout"], "log": log}
    if not (a["isolate"] or a["budget"]):
        return (*bench_workers(groups, job, **timing), "workers")
    end = None if a["budget"] is None else time.monotonic() + a["budget"]
    return (*bench_each(groups, job, fresh=a["isolate"], end=end, **timing),
            "isolated" if a["isolate"] else "one at a time")


def run_benchmark(log=print, **options):
    """Runs the benchmark; returns the results dict (see `benchmarks.report`).
    `options` (`DEFAULTS`) are the flags', and `budget` (seconds: one config
    at a time within it, each in at most `timeout` seconds)."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"run_benchmark() got unknown options {unknown}")
    a = {**DEFAULTS, **options}
    cfg.check_choices(**{k: a[k] for k in ("methods", "precisions", "xla", "batchnorms",
                                           "inputs", "backends")})
    cfg.env_variants(a["worker_envs"] + a["torch_envs"])
    start, machine = time.perf_counter(), machine_info()
    job = {k: a[k] for k in ("batch_size", "warmup", "timer", "synthetic_images")}
    configs = cfg.expand(**{k: a[k] for k in ("archs", "methods", "precisions", "xla",
                                              "batchnorms", "inputs", "backends")})
    skipped = [{**c, "batch_size": a["batch_size"], "skipped": cfg.skip_reason(c)}
               for c in configs if cfg.skip_reason(c)]
    for row in skipped:
        log(f"[skipped] {cfg.config_label(row)}: {row['skipped']}")
    torch_configs, torch_skipped = _torch_configs(a, log)
    memory = _memory(a, torch_configs, job, log)
    train, workers, mode = _train(
        a, [c for c in configs if not cfg.skip_reason(c)], torch_configs, job, log)
    pipelines, mix_ops = _parts(a, log)
    return add_ratios({
        "machine": machine, "settings": {**a, "mode": mode}, "train": train + skipped,
        "memory": memory, "pipeline": pipelines, "mix_ops": mix_ops, "workers": workers,
        "torch_skipped": torch_skipped, "process_peak_rss_mb": peak_rss_mb(),
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "wall_s": time.perf_counter() - start})


def _positive_int(text):
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive integer")
    return value


def build_parser():
    from patchup_tf.app.constants import PRECISIONS

    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Train-step and "
                                "input-pipeline throughput of patchup_tf (defaults: "
                                f"{DEFAULTS}; --tiny: {cfg.TINY}).")
    many, envs = {"nargs": "+", "default": None}, {"nargs": "+", "metavar": "K=V[,K=V]"}
    p.add_argument("--archs", **many)
    p.add_argument("--methods", nargs="*", help="none if given empty (the original only)")
    p.add_argument("--precisions", choices=PRECISIONS, **many)
    p.add_argument("--xla", choices=cfg.XLA, **many, help="jit_compile: default (each backend's "
                   "own: TensorFlow's tf.function, JAX compiled, PyTorch eager), off, on")
    p.add_argument("--batchnorm", dest="batchnorms", **many, help="fused and/or keras")
    p.add_argument("--input", choices=cfg.INPUTS, dest="inputs", **many, help="what feeds the "
                   "step: in-memory batches or the trainer's train_epochs stream (end to end)")
    p.add_argument("--backend", dest="backends", metavar="BACKEND", **many,
                   help=f"Keras backends ({', '.join(cfg.BACKENDS)}), one worker each")
    p.add_argument("--pipelines", nargs="*", choices=("digits", "synthetic"),
                   help="input pipelines timed alone (none if given empty)")
    for flag, kind, text in (
            ("--batch_size", _positive_int, None), ("--steps", _positive_int, "steps per window"),
            ("--warmup", _positive_int, "fit steps before timing (+1 call)"),
            ("--windows", _positive_int, "timed windows (median reported)"),
            ("--budget", float, "seconds for the run: one config at a time, the rest skipped"),
            ("--timeout", float, "seconds a worker may take to answer (--budget: a config)")):
        p.add_argument(flag, type=kind, help=text)
    for flag, text in (("--mix_ops", "also time PatchUp's own ops alone"),
                       ("--workers", "accepted for older command lines: always workers"),
                       ("--isolate", "each config in a fresh subprocess: its own peak RSS"),
                       ("--tiny", "the CI smoke run (explicit flags win)")):
        p.add_argument(flag, action="store_true", help=text)
    p.add_argument("--timer", choices=("function", "fit"),
                   help="time model.train_function calls (fit's inner loop) or whole fit calls")
    p.add_argument("--worker_env", dest="worker_envs", **envs, help="environment variants, "
                   "one worker each (e.g. TF_ENABLE_ONEDNN_OPTS=0 TF_ENABLE_ONEDNN_OPTS=1)")
    p.add_argument("--out", default="results.json", help="JSON output path ('' for none)")
    p.add_argument("--against-torch", "--against_torch", action="store_true",
                   dest="against_torch", help="also time the PyTorch original's float32 step "
                   "and compare peak RSS, each alone (skipped with a message without torch)")
    p.add_argument("--torch_original", metavar="PATH",
                   help=f"a checkout of the original (git clone {original.ORIGINAL_URL})")
    p.add_argument("--torch_python", help="a Python with torch and the original's requirements")
    p.add_argument("--torch_env", dest="torch_envs", **envs,
                   help="the original's environment variants (ratios use its best)")
    p.add_argument("--torch_methods", choices=original.METHODS, **many,
                   help="the original's methods (default: those of --methods it has)")
    p.add_argument("--memory_methods", nargs="*",
                   help="float32 methods whose peak RSS is compared (none if given empty)")
    return p


def options_from_args(args):
    """`run_benchmark`'s options from parsed arguments: those given, then the
    preset's (`--tiny` or the full one), then `DEFAULTS`."""
    preset = cfg.TINY if args.tiny else {}
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in {**preset, **given}.items()}


def main(argv=None):
    process_settings()  # before TensorFlow loads
    args = build_parser().parse_args(argv)
    if args.against_torch and not args.torch_original:
        print(f"error: {original.MISSING_PATH}", file=sys.stderr)
        return 2
    try:
        results = run_benchmark(log=lambda m: print(m, file=sys.stderr, flush=True),
                                **options_from_args(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results["settings"].update(tiny=args.tiny, argv=sys.argv[1:] if argv is None else list(argv))
    print(format_table(results), flush=True)
    if args.out:
        from patchup_tf.files import write_json  # whole or not at all

        write_json(args.out, results)
        print(f"wrote {args.out}")
    return 0
