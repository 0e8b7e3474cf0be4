"""The speed benchmark: train-step throughput per configuration, the input
pipeline, memory, and the PyTorch original side by side.

    python -m benchmarks --tiny
    python -m benchmarks --against-torch --torch_original ~/src/PatchUp

For every configuration asked for (arch, method, precision, XLA, BatchNorm
kind, input) it times the training step as `model.fit` runs it
(`patchup_tf.app.steptimer`): the median over `--windows` windows of `--steps`
steps after a warm-up, with the process CPU seconds per step beside the
wall-clock img/s (CPU time is robust to other load on the machine). It
reports ratios (to vanilla, to the original, of the pipeline to the fastest
step); the targets and which dated run meets them are in
`benchmarks/results/README.md`.

Three ways to run the configurations:

* in this process (default): all are built and warmed, then their timed
  windows run round-robin, so a change of background load hits them alike;
* workers (`--workers`, implied by `--against-torch` and by several
  `--worker_env`): one process per group (an environment variant, the
  PyTorch original), their windows interleaved over pipes
  (`benchmarks.workers`);
* isolated (`--isolate`): each configuration alone in a fresh process; its
  peak resident memory is the honest per-config figure.

A group is a worker command plus an environment, so timing the library
under another Keras backend is one more group: `--backend tensorflow jax
torch` holds each backend's configs in its own worker (`KERAS_BACKEND` in
its environment; TensorFlow is never imported by the JAX and PyTorch
workers, which feed NumPy batches and time whole `fit` calls), their
windows interleaved, and reports each row's img/s over TensorFlow's for the
same config. What a backend cannot run is skipped with the reason.
"""

import argparse
import os
import sys
import time

from benchmarks import configs as cfg
from benchmarks import tf_worker
from benchmarks import torch_original as original
from benchmarks.interleave import bench_workers, run_isolated
from benchmarks.machine import loadavg, machine_info, peak_rss_mb
from benchmarks.ratios import add_ratios
from benchmarks.report import format_table, write_results
from patchup_tf.app.cli import process_settings


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


def _groups(configs, envs, torch_configs, torch_envs, torch_command, backends):
    """One worker group per environment variant of each side (and Keras backend)."""
    groups = [(tf_worker.command(), {**env, "KERAS_BACKEND": backend},
               [{**c, "variant": label} for c in configs if c["backend"] == backend],
               cfg.IMPL + (f"[{backend}]" if len(backends) > 1 else "")
               + (f"[{label}]" if label else ""))
              for backend in backends for label, env in envs
              if any(c["backend"] == backend for c in configs)]
    groups += [(torch_command, env, [{**c, "variant": label} for c in torch_configs],
                cfg.TORCH_IMPL + (f"[{label}]" if label else ""))
               for label, env in torch_envs if torch_configs]
    return groups


def _isolated(groups, settings, timeout, log):
    rows = []
    for command, env, group, _ in groups:
        for c in group:
            log(f"[isolated] {cfg.config_label(c)}")
            rows.append(run_isolated(c, command, env=env, timeout=timeout, log=log, **settings))
    return rows


def _memory(a, configs, torch_configs, envs, torch_envs, torch_command, settings, log):
    """Peak RSS of `memory_methods` float32, ours and the original's, each alone."""
    rows = []
    for method in a["memory_methods"] or ("soft_patchup",):
        ours = cfg.make_config("preactresnet18", method, "float32", False, a["batchnorms"][0])
        theirs = [c for c in torch_configs if c["method"] == method and c["arch"] == ours["arch"]]
        theirs = theirs or original.job_configs([ours["arch"]], [method], a["batch_size"])
        for c, command, env in ((ours, tf_worker.command(), envs[0][1]),
                                ({**theirs[0], "variant": torch_envs[-1][0]}, torch_command,
                                 torch_envs[-1][1])):
            log(f"[memory, isolated] {cfg.config_label(c)}")
            rows.append(run_isolated(c, command, env=env, timeout=a["worker_timeout"], log=log,
                                     **{**settings, "windows": 1}))
    return rows


def _pipelines(a, log):
    from benchmarks.machine import reset_peak_rss
    from benchmarks.pipeline import bench_pipeline

    rows = []
    for kind in a["pipelines"]:
        log(f"[pipeline] {kind}")
        reset_peak_rss()
        try:
            rows.append(bench_pipeline(kind, batch_size=a["batch_size"],
                                       batches=a["pipeline_batches"], windows=a["windows"],
                                       synthetic_images=a["synthetic_images"]))
        except Exception as e:  # noqa: BLE001
            rows.append({"pipeline": kind, "error": cfg.error_text(e)})
    return rows


def _mix_ops(a, log):
    if not a["mix_ops"]:
        return []
    from benchmarks.mix_ops import bench_mix_ops

    log("[mixing ops]")
    return [row for precision in a["precisions"]
            for row in bench_mix_ops(batch_size=a["batch_size"], precision=precision,
                                     windows=max(a["windows"], 3))]


def _runnable(configs, batch_size, log):
    """`(configs a backend can run, skipped rows with the reason)`."""
    runnable, skipped = [], []
    for c in configs:
        reason = cfg.skip_reason(c)
        if reason:
            log(f"[skipped] {cfg.config_label(c)}: {reason}")
            skipped.append({**c, "batch_size": batch_size, "skipped": reason})
        else:
            runnable.append(c)
    return runnable, skipped


def _side_by_side(rows, configs):
    """`rows` in the order of `configs` (each config's backends together)."""
    def key(r):
        return cfg.config_label({**r, "backend": "", "variant": ""})

    order = {key(c): i for i, c in reversed(list(enumerate(configs)))}
    return sorted(rows, key=lambda r: order.get(key(r), len(order)))


def _train(a, settings, log):
    """`(rows, torch_configs, torch_skipped, workers_info, mode, rss_scope, tf_facts)`."""
    backends = tuple(dict.fromkeys(a["backends"]))
    configs = cfg.expand(backends=backends, **{
        k: a[k] for k in ("archs", "methods", "precisions", "xla", "batchnorms", "inputs",
                          "xla_methods")})
    rows, memory, skipped, info, mode, scope, facts = _train_runnable(
        a, settings, log, *_runnable(configs, a["batch_size"], log), backends)
    return _side_by_side(rows, configs), memory, skipped, info, mode, scope, facts


def _train_runnable(a, settings, log, configs, skipped_rows, backends):
    """`_train`'s answer for the runnable `configs`, `skipped_rows` added to its rows."""
    envs, torch_envs = cfg.env_variants(a["worker_envs"]), cfg.env_variants(a["torch_envs"])
    torch_configs, skipped = _torch_configs(a, log)
    torch_command = original.command(a["torch_original"] or ".", a["torch_python"])
    groups = _groups(configs, envs, torch_configs, torch_envs, torch_command, backends)
    memory = (_memory(a, configs, torch_configs, envs, torch_envs, torch_command, settings, log)
              if torch_configs else [])
    if a["isolate"]:
        return (_isolated(groups, settings, a["worker_timeout"], log) + skipped_rows, memory,
                skipped, [], "isolated", "each config's own subprocess (wait4 ru_maxrss)", None)
    if a["workers"] or torch_configs or len(envs) > 1 or backends != ("tensorflow",):
        rows, info = bench_workers(groups, start_timeout=a["worker_timeout"],
                                   window_timeout=a["worker_timeout"], log=log, **settings)
        return (rows + skipped_rows, memory, skipped, info, "workers",
                "per worker process, VmHWM reset before each window", None)
    from benchmarks.train_bench import bench_train, tf_info

    facts = tf_info(a["intra_threads"], a["inter_threads"])
    job = {k: v for k, v in settings.items() if k not in ("intra_threads", "inter_threads")}
    rows = bench_train(configs, log=log, **job)
    return (rows + skipped_rows, memory, skipped, [], "in-process",
            "whole process, VmHWM reset before each window: includes every model still "
            "resident (use --isolate for per-config figures)", facts)


SETTINGS = ("batch_size", "steps", "warmup", "windows", "timer", "synthetic_images",
            "intra_threads", "inter_threads")
DEFAULTS = {
    "archs": ("preactresnet18",), "methods": cfg.DEFAULT_METHODS,
    "precisions": ("float32", "mixed_bfloat16"), "xla": ("default", "on"), "xla_methods": None,
    "batchnorms": ("fused",), "inputs": ("batches",), "batch_size": 100, "steps": 3,
    "warmup": 2, "windows": 3, "pipelines": ("digits", "synthetic"), "pipeline_batches": 50,
    "synthetic_images": 10000, "isolate": False, "workers": False, "worker_envs": (),
    "against_torch": False, "torch_original": None, "torch_python": None,
    "torch_methods": None, "torch_envs": (), "memory_methods": None, "mix_ops": False,
    "timer": "function", "intra_threads": None, "inter_threads": None,
    "worker_timeout": 1800.0, "backends": ("tensorflow",),
}


def run_benchmark(log=print, **options):
    """Runs the benchmark; returns the results dict (see `benchmarks.report`).

    Options (`DEFAULTS`): `xla_methods` limits XLA "on" to these methods;
    `worker_envs` are environment variants (`"KEY=VALUE,..."`), one worker
    each (per Keras backend of `backends`); `against_torch` adds the PyTorch
    original from the checkout `torch_original` for `torch_methods` (default:
    the methods asked for that it has), one worker per `torch_envs` variant, and the peak RSS of
    `memory_methods` (default `soft_patchup`) float32, ours against the
    original's, each alone in a fresh process.
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"run_benchmark() got unknown options {unknown}")
    a = {**DEFAULTS, **options}
    cfg.check_choices(**{k: a[k] for k in ("methods", "precisions", "xla", "batchnorms",
                                           "inputs", "backends")})
    start = time.perf_counter()
    machine = machine_info()
    settings = {k: a[k] for k in SETTINGS}
    train, memory, skipped, workers, mode, rss_scope, facts = _train(a, settings, log)
    results = {
        "machine": machine, "tf": facts,
        "settings": {**{k: list(v) if isinstance(v, tuple) else v for k, v in a.items()},
                     "mode": mode, "rss_scope": rss_scope},
        "train": train, "memory": memory, "pipeline": _pipelines(a, log),
        "mix_ops": _mix_ops(a, log), "workers": workers, "torch_skipped": skipped,
        "process_peak_rss_mb": peak_rss_mb(), "loadavg_end": loadavg(),
        "wall_s": time.perf_counter() - start,
    }
    return add_ratios(results)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" only where the help does not state the default."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


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

    p.add_argument("--archs", nargs="+", default=["preactresnet18"])
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"default {' '.join(cfg.DEFAULT_METHODS)}")
    p.add_argument("--precisions", nargs="+", default=None, choices=PRECISIONS,
                   help="default float32 mixed_bfloat16")
    p.add_argument("--xla", nargs="+", default=None, choices=cfg.XLA,
                   help="jit_compile settings: default (each backend's own: TensorFlow's "
                        "tf.function, JAX compiled, PyTorch eager), off, on; default: "
                        "default on")
    p.add_argument("--xla_methods", nargs="+", default=None,
                   help="run XLA 'on' only for these methods (default: all)")
    p.add_argument("--batchnorm", nargs="+", default=None, dest="batchnorms",
                   help="BatchNorm kinds (fused kernel / Keras' exact layer 'keras'); "
                        "default fused")
    p.add_argument("--input", nargs="+", default=["batches"], choices=cfg.INPUTS, dest="inputs",
                   help="what feeds the timed step: pre-made in-memory batches, or the "
                        "trainer's train_epochs stream (end to end)")
    p.add_argument("--backend", nargs="+", default=["tensorflow"], dest="backends",
                   metavar="BACKEND",
                   help=f"Keras backends ({', '.join(cfg.BACKENDS)}), each in its own worker "
                        "process, their windows interleaved; default tensorflow (in this "
                        "process unless --workers)")
    p.add_argument("--pipelines", nargs="*", default=["digits", "synthetic"],
                   choices=("digits", "synthetic"))
    p.add_argument("--mix_ops", action="store_true",
                   help="also time PatchUp's own ops alone at each position")


def _add_how(p):
    """How to time: sizes, windows, threads, processes."""
    p.add_argument("--batch_size", type=_positive_int, default=None,
                   help="default 100 (8 with --tiny)")
    p.add_argument("--steps", type=_positive_int, default=None, help="train steps per window")
    p.add_argument("--warmup", type=_positive_int, default=None,
                   help="fit steps before timing (+1 call)")
    p.add_argument("--windows", type=_positive_int, default=None,
                   help="timed windows (median reported)")
    p.add_argument("--pipeline_batches", type=_positive_int, default=None,
                   help="batches per pipeline window")
    p.add_argument("--synthetic_images", type=_positive_int, default=None)
    p.add_argument("--timer", choices=("function", "fit"), default="function",
                   help="time model.train_function calls (fit's inner loop) or whole fit calls")
    p.add_argument("--intra_threads", type=int, default=None)
    p.add_argument("--inter_threads", type=int, default=None)
    p.add_argument("--workers", action="store_true",
                   help="hold the configs in a worker process (one per --worker_env) and "
                        "interleave their windows from this one")
    p.add_argument("--worker_env", nargs="+", default=[], dest="worker_envs", metavar="K=V[,K=V]",
                   help="environment variants, one worker each, interleaved (e.g. "
                        "TF_ENABLE_ONEDNN_OPTS=0 TF_ENABLE_ONEDNN_OPTS=1)")
    p.add_argument("--worker_timeout", type=float, default=1800.0,
                   help="seconds a worker may take to start or to answer a window")
    p.add_argument("--isolate", action="store_true",
                   help="run each config in a fresh subprocess; report its own peak RSS")
    p.add_argument("--tiny", action="store_true",
                   help="CI smoke run: batch 8, 1 step x 2 windows, vanilla+soft_patchup, "
                        "float32, XLA off (explicit flags still win)")
    p.add_argument("--out", default="results.json", help="JSON output path ('' for none)")


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
    p.add_argument("--torch_env", nargs="+", default=[], dest="torch_envs", metavar="K=V[,K=V]",
                   help="environment variants of the original's worker (e.g. '' "
                        "OMP_WAIT_POLICY=PASSIVE); ratios use its best")
    p.add_argument("--torch_methods", nargs="+", default=None, choices=original.METHODS,
                   help="the original's methods (default: those of --methods it has)")
    p.add_argument("--memory_methods", nargs="+", default=None,
                   help="with --against-torch: float32 methods whose peak RSS is compared in "
                        "isolated processes (default soft_patchup)")


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Train-step and input-pipeline throughput of patchup_tf, optionally "
                    "against the PyTorch original.",
        formatter_class=_HelpFormatter)
    _add_what(p)
    _add_how(p)
    _add_torch(p)
    return p


def options_from_args(args):
    """`run_benchmark`'s options from parsed arguments (`--tiny` or the full presets)."""
    preset = cfg.TINY if args.tiny else cfg.FULL
    options = {k: getattr(args, k) for k in DEFAULTS if hasattr(args, k)}
    for k, default in preset.items():
        if options.get(k) is None:
            options[k] = default
    return options


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
