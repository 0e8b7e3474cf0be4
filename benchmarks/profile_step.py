"""Where a training step's time goes: TensorFlow's profiler, per op type.

    python -m benchmarks.profile_step --method soft_patchup --precision float32 \
        --batchnorm fused --steps 3 --out /tmp/profile.json

Builds and warms up the model as the benchmark does
(`benchmarks.keras_worker.TrainBench`), records `--steps` steps with
`tf.profiler` and prints the host self time per op type (share of the
total) from the profiler's `framework_op_stats` tool; the JSON holds every op.
"""

import argparse
import collections
import glob
import json
import os
import sys
import tempfile

from patchup_tf.app.cli import process_settings


def op_stats(logdir):
    """The profile's `framework_op_stats` table: one dict per op."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    data, ok = plugin.xspace_to_tools_data(paths, "framework_op_stats", {}) if paths else ("", 0)
    if not ok:
        raise RuntimeError(f"no profile the profiler could read under {logdir}")
    table = json.loads(data)
    table = table[0] if isinstance(table, list) else table
    cols = [c["id"] if isinstance(c, dict) else c for c in table["cols"]]
    return [dict(zip(cols, (c.get("v") if isinstance(c, dict) else c for c in row["c"])))
            for row in table["rows"]]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("--arch", "preactresnet18"), ("--method", "soft_patchup"),
                          ("--precision", "float32"), ("--batchnorm", "fused"),
                          ("--batch_size", 100), ("--steps", 3), ("--top", 20), ("--out", "")):
        p.add_argument(flag, default=default, type=type(default))
    p.add_argument("--xla", action="store_true")
    args = p.parse_args(argv)
    process_settings()  # before TensorFlow loads
    import tensorflow as tf

    from benchmarks.configs import make_config
    from benchmarks.keras_worker import TrainBench

    config = make_config(args.arch, args.method, args.precision, args.xla, args.batchnorm)
    bench = TrainBench(config, args.batch_size, warmup=2)
    bench.time(1)
    logdir = tempfile.mkdtemp(prefix="patchup_profile_")
    tf.profiler.experimental.start(logdir)
    timing = bench.time(args.steps)
    tf.profiler.experimental.stop()
    rows, by_type = op_stats(logdir), collections.Counter()
    for r in rows:
        if r.get("host_or_device", "Host") in ("Host", "Device", None) and r.get("type"):
            by_type[r["type"]] += float(r.get("total_self_time") or 0.0)
    total = sum(by_type.values()) or 1.0
    print(f"{args.arch} {args.method} {args.precision} bn={args.batchnorm} xla={args.xla} "
          f"batch {args.batch_size}: {args.batch_size / timing.wall_s:.1f} img/s, "
          f"{timing.cpu_s:.2f} CPU-s/step; op self time over {args.steps} steps "
          f"{total / 1e6:.2f} s")
    for name, us in by_type.most_common(args.top):
        print(f"  {name:<40}{us / 1e3 / args.steps:>10.1f} ms/step {100 * us / total:>6.1f}%")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": config, "by_type_us": dict(by_type.most_common()), "ops": rows},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
