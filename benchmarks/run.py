"""The speed benchmark's driver: train-step throughput per configuration, the
input pipeline, memory, and the PyTorch original side by side.

    python -m benchmarks --tiny
    python -m benchmarks --against-torch --torch_original ~/src/PatchUp

For every configuration asked for (arch, method, precision, XLA, BatchNorm
kind, input, Keras backend) it times the training step as `model.fit` runs
it (`patchup_tf.app.steptimer`): the median over `--windows` windows of
`--steps` steps after a warm-up, with the process CPU seconds per step
beside the wall-clock img/s (CPU time is robust to other load on the
machine). It reports ratios (to vanilla, to TensorFlow, to the original, of
the pipeline to the fastest step); the targets and which dated run meets
them are in `benchmarks/results/README.md`.

The configurations live in worker processes (`benchmarks.workers`), one per
group: a Keras backend (`KERAS_BACKEND` in its environment; TensorFlow is
never imported by the JAX and PyTorch workers, which feed NumPy batches and
time whole `fit` calls) in an environment variant (`--worker_env`), and the
PyTorch original in each of its variants (`--torch_env`). Three ways to run
them: their windows interleaved (default), so a change of background load
hits them alike; each alone in a fresh process (`--isolate`), whose peak
resident memory is the honest per-config figure; or one at a time within a
time budget (`budget`, `benchmarks.gpu_bench`). What a backend cannot run is
skipped with the reason.
"""

import argparse
import sys
import time

from benchmarks import configs as cfg
from benchmarks import keras_worker
from benchmarks import torch_original as original
from benchmarks.machine import loadavg, machine_info, peak_rss_mb
from benchmarks.report import add_ratios, format_table, write_results
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
    problem = original.check_checkout(a["torch_original"])
    if problem:
        raise ValueError(problem)
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
    """Peak RSS of `memory_methods` float32, ours and the original's, each alone."""
    groups = []
    for method in a["memory_methods"] if torch_configs else ():
        ours = cfg.make_config("preactresnet18", method, "float32", False, a["batchnorms"][0])
        theirs = original.job_configs([ours["arch"]], [method], a["batch_size"])
        label, env = cfg.env_variants(a["torch_envs"])[-1]
        groups += [(KERAS_WORKER, {**cfg.env_variants(a["worker_envs"])[0][1],
                                   "KERAS_BACKEND": "tensorflow"}, [ours], cfg.IMPL),
                   (original.command(a["torch_original"], a["torch_python"]), env,
                    [{**c, "variant": label} for c in theirs], cfg.TORCH_IMPL)]
    if groups:
        log("[memory, each alone]")
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
    """`(rows, workers_info, mode, rss_scope)` of the runnable configs."""
    groups = _groups(a, configs, torch_configs)
    timing = {"windows": a["windows"], "steps": a["steps"], "timeout": a["timeout"], "log": log}
    if a["isolate"]:
        return (*bench_each(groups, job, fresh=True, **timing), "isolated",
                "each config's own subprocess (wait4 ru_maxrss)")
    if a["budget"] is not None:
        end = time.monotonic() + a["budget"]
        return (*bench_each(groups, job, end=end, **timing), "one at a time",
                "per worker process, VmHWM reset before each window")
    return (*bench_workers(groups, job, **timing), "workers",
            "per worker process, VmHWM reset before each window")


def run_benchmark(log=print, **options):
    """Runs the benchmark; returns the results dict (see `benchmarks.report`).

    Options (`DEFAULTS`): `worker_envs` are environment variants
    (`"KEY=VALUE,..."`), one worker each per Keras backend of `backends`;
    `against_torch` adds the PyTorch original from the checkout
    `torch_original` for `torch_methods` (default: the methods asked for that
    it has), one worker per `torch_envs` variant, and the peak RSS of
    `memory_methods` float32, ours against the original's, each alone in a
    fresh process; `budget` (seconds) times one config at a time within it,
    each in at most `timeout` seconds.
    """
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
    train, workers, mode, rss_scope = _train(
        a, [c for c in configs if not cfg.skip_reason(c)], torch_configs, job, log)
    pipelines, mix_ops = _parts(a, log)
    results = {
        "machine": machine,
        "settings": {**{k: list(v) if isinstance(v, tuple) else v for k, v in a.items()},
                     "mode": mode, "rss_scope": rss_scope},
        "train": _side_by_side(train + skipped, configs), "memory": memory,
        "pipeline": pipelines, "mix_ops": mix_ops, "workers": workers,
        "torch_skipped": torch_skipped, "process_peak_rss_mb": peak_rss_mb(),
        "loadavg_end": loadavg(), "wall_s": time.perf_counter() - start,
    }
    return add_ratios(results)


def _side_by_side(rows, configs):
    """`rows` in the order of `configs` (each config's backends together), the
    original's last."""
    def key(r):
        return cfg.config_label({**r, "backend": "", "variant": ""})

    order = {key(c): i for i, c in reversed(list(enumerate(configs)))}
    return sorted(rows, key=lambda r: order.get(key(r), len(order)))


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a positive integer")
    return value


def _add_what(p):
    """What to time: the configurations."""
    from patchup_tf.app.constants import PRECISIONS

    p.add_argument("--archs", nargs="+", default=None, help="default preactresnet18")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default {' '.join(cfg.DEFAULT_METHODS)}")
    p.add_argument("--precisions", nargs="+", default=None, choices=PRECISIONS,
                   help="default float32 mixed_bfloat16")
    p.add_argument("--xla", nargs="+", default=None, choices=cfg.XLA,
                   help="jit_compile settings: default (each backend's own: TensorFlow's "
                        "tf.function, JAX compiled, PyTorch eager), off, on; default: "
                        "default on")
    p.add_argument("--batchnorm", nargs="+", default=None, dest="batchnorms",
                   help="BatchNorm kinds (fused kernel / Keras' exact layer 'keras'); "
                        "default fused")
    p.add_argument("--input", nargs="+", default=None, choices=cfg.INPUTS, dest="inputs",
                   help="what feeds the timed step: pre-made in-memory batches (default), or "
                        "the trainer's train_epochs stream (end to end)")
    p.add_argument("--backend", nargs="+", default=None, dest="backends", metavar="BACKEND",
                   help=f"Keras backends ({', '.join(cfg.BACKENDS)}), each in its own worker "
                        "process, their windows interleaved; default tensorflow")
    p.add_argument("--pipelines", nargs="*", default=None, choices=("digits", "synthetic"),
                   help="input pipelines timed alone (default both; none if given empty)")
    p.add_argument("--mix_ops", action="store_true",
                   help="also time PatchUp's own ops alone at each position")


def _add_how(p):
    """How to time: sizes, windows, processes."""
    p.add_argument("--batch_size", type=_positive_int, default=None,
                   help="default 100 (8 with --tiny)")
    p.add_argument("--steps", type=_positive_int, default=None, help="train steps per window")
    p.add_argument("--warmup", type=_positive_int, default=None,
                   help="fit steps before timing (+1 call)")
    p.add_argument("--windows", type=_positive_int, default=None,
                   help="timed windows (median reported)")
    p.add_argument("--timer", choices=("function", "fit"), default=None,
                   help="time model.train_function calls (fit's inner loop, the default) or "
                        "whole fit calls")
    p.add_argument("--workers", action="store_true",
                   help="accepted for older command lines: the configurations always live in "
                        "worker processes")
    p.add_argument("--worker_env", nargs="+", default=None, dest="worker_envs",
                   metavar="K=V[,K=V]",
                   help="environment variants, one worker each, interleaved (e.g. "
                        "TF_ENABLE_ONEDNN_OPTS=0 TF_ENABLE_ONEDNN_OPTS=1)")
    p.add_argument("--isolate", action="store_true",
                   help="run each config in a fresh subprocess; report its own peak RSS")
    p.add_argument("--tiny", action="store_true",
                   help="CI smoke run: batch 8, 1 step x 2 windows, vanilla+soft_patchup, "
                        "float32, XLA off (explicit flags still win)")
    p.add_argument("--out", default="results.json",
                   help="JSON output path ('' for none; default results.json)")


def _add_torch(p):
    """The PyTorch original, from a checkout of it."""
    p.add_argument("--against-torch", "--against_torch", action="store_true",
                   dest="against_torch",
                   help="also time the PyTorch original's step (float32, from --torch_original) "
                        "interleaved with ours, and compare peak RSS in isolated processes; "
                        "skipped with a message when torch is missing")
    p.add_argument("--torch_original", default=None, metavar="PATH",
                   help=f"a checkout of the PyTorch original (git clone {original.ORIGINAL_URL})")
    p.add_argument("--torch_python", default=None,
                   help="the Python that has torch and the original's requirements "
                        "(default: this one)")
    p.add_argument("--torch_env", nargs="+", default=None, dest="torch_envs",
                   metavar="K=V[,K=V]",
                   help="environment variants of the original's worker (e.g. '' "
                        "OMP_WAIT_POLICY=PASSIVE); ratios use its best")
    p.add_argument("--torch_methods", nargs="+", default=None, choices=original.METHODS,
                   help="the original's methods (default: those of --methods it has)")
    p.add_argument("--memory_methods", nargs="*", default=None,
                   help="with --against-torch: float32 methods whose peak RSS is compared in "
                        "isolated processes (default soft_patchup; none if given empty)")


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Train-step and input-pipeline throughput of patchup_tf, optionally "
                    "against the PyTorch original.")
    _add_what(p)
    _add_how(p)
    _add_torch(p)
    return p


def options_from_args(args):
    """`run_benchmark`'s options from parsed arguments: those given, then the
    preset's (`--tiny` or the full one), then `DEFAULTS`."""
    preset = cfg.TINY if args.tiny else cfg.FULL
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}
    return {k: tuple(v) if isinstance(v, list) else v
            for k, v in {**preset, **given}.items()}


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
        write_results(args.out, results)
        print(f"wrote {args.out}")
    return 0
