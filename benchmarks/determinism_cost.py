"""What `--deterministic True` costs per training step, against `False`.

    python -m benchmarks.determinism_cost [--arch wrn28_2] [--method hard_patchup]
        [--batch_size 100] [--steps 5] [--windows 7] [--out determinism_cost.json]

Two worker processes, one per setting (op determinism is a process-wide
switch applied before the kernels are made), each builds the trainer's
model (`models.build` + `recipe`, float32) and the trainer's input stream
(`train_epochs` on the digits set, batches of `--batch_size`), warms the
step up, then times windows of `--steps` calls of `model.train_function`
(what `fit` calls once per step). This process alternates the windows
(off, on, off, on, ...; only one worker computes at a time), so a change
of background load hits both alike, and reports per setting the median
img/s and the median process CPU-seconds per step, plus the ratios.
CPU only (`CUDA_VISIBLE_DEVICES=""`) unless `--gpu`.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

from benchmarks.machine import cpu_model
from patchup_tf.app.cli import process_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args):
    """One setting: reads 'window' lines on stdin, answers JSON lines."""
    if args.deterministic:
        from patchup_tf.app.experiment.run import configure_determinism

        configure_determinism()
    import keras

    from patchup_tf.app import data as data_lib
    from patchup_tf import models
    from patchup_tf.app.steptimer import KerasSteps
    from patchup_tf.training import recipe

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("float32")
    datasets = data_lib.make_datasets("digits", batch_size=args.batch_size,
                                      labels_per_class=args.labels_per_class, seed=0)
    model = models.build(args.arch, datasets.num_classes, args.method, seed=0)
    optimizer, _ = recipe(0.1, 0.9, 1e-4, [10**6], [0.1])
    model.compile(optimizer=optimizer)
    steps = KerasSteps(model, data_lib.train_epochs(datasets), warmup=2)
    print(json.dumps({"ready": True, "determinism": bool(args.deterministic)}), flush=True)
    for line in sys.stdin:
        if line.strip() != "window":
            break
        timing = steps.time(args.steps)
        print(json.dumps({"img_s": args.batch_size / timing.wall_s,
                          "cpu_s_per_step": timing.cpu_s}), flush=True)


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="wrn28_2")
    p.add_argument("--method", default="hard_patchup")
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--labels_per_class", type=int, default=None)
    p.add_argument("--steps", type=int, default=5, help="train steps per timed window")
    p.add_argument("--windows", type=int, default=7, help="timed windows per setting")
    p.add_argument("--gpu", action="store_true", help="leave the GPUs visible")
    p.add_argument("--onednn_off", action="store_true",
                   help="also TF_ENABLE_ONEDNN_OPTS=0 in the deterministic worker (Eigen kernels)")
    p.add_argument("--out", default=None, help="also write the results here (JSON)")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--deterministic", type=int, default=0, help=argparse.SUPPRESS)
    return p


def _windows(args):
    """Both workers' window answers, `{False: [...], True: [...]}`, alternated."""
    env = process_settings(dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT
                                + os.pathsep + os.environ.get("PYTHONPATH", "")))
    if not args.gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    passed = [a for a in sys.argv[1:] if a not in ("--gpu", "--onednn_off")]
    procs = {}
    for setting in (False, True):  # built one after the other: no contention while tracing
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.determinism_cost", *passed, "--_worker",
             "--deterministic", str(int(setting))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env=dict(env, TF_ENABLE_ONEDNN_OPTS="0") if setting and args.onednn_off else env)
        ready = proc.stdout.readline()
        if not ready:
            raise SystemExit(f"the worker (deterministic={setting}) failed to start")
        procs[setting] = proc
    results = {False: [], True: []}
    for _ in range(args.windows):
        for setting, proc in procs.items():
            proc.stdin.write("window\n")
            proc.stdin.flush()
            results[setting].append(json.loads(proc.stdout.readline()))
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    return results


def main():
    args = _parser().parse_args()
    if args._worker:
        return worker(args)
    results = _windows(args)

    def summary(rows):
        return {"img_s": statistics.median(r["img_s"] for r in rows),
                "cpu_s_per_step": statistics.median(r["cpu_s_per_step"] for r in rows),
                "windows": rows}

    off, on = summary(results[False]), summary(results[True])
    report = {
        "date": datetime.date.today().isoformat(), "cpu": cpu_model(),
        "cores": os.cpu_count(), "gpu": args.gpu, "onednn_off_when_deterministic": args.onednn_off,
        "config": {k: getattr(args, k) for k in ("arch", "method", "batch_size", "steps",
                                                 "windows", "labels_per_class")},
        "deterministic_false": off, "deterministic_true": on,
        "img_s_ratio_true_over_false": on["img_s"] / off["img_s"],
        "cpu_per_step_ratio_true_over_false": on["cpu_s_per_step"] / off["cpu_s_per_step"],
    }
    print(f"{report['date']} {report['cpu']} ({report['cores']} cores), {args.arch} "
          f"{args.method} batch {args.batch_size}, median of {args.windows} windows of "
          f"{args.steps} steps")
    for name, r in (("--deterministic False", off), ("--deterministic True", on)):
        print(f"  {name:22s} {r['img_s']:8.1f} img/s  {r['cpu_s_per_step']:.3f} CPU-s/step")
    print(f"  True/False: img/s x{report['img_s_ratio_true_over_false']:.3f}, CPU-s/step "
          f"x{report['cpu_per_step_ratio_true_over_false']:.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
