"""GPU throughput of patchup_tf (and the PyTorch original's step), within a time budget.

`python -m benchmarks` with a preset (`benchmarks/gpu.sh` tells what it
times): one configuration at a time within `--budget` seconds, each in at
most `--timeout` (one that fails or runs out of time gets an error row and a
fresh worker), on the Keras backend `KERAS_BACKEND` names, and the original
given `--torch_original PATH` (`--impls tf` or `torch`: one side only).
Writes `gpu_results.json` and `gpu_results.md` to the folder `--out`. This
process imports neither TensorFlow nor torch.
"""

import os
import sys

from benchmarks import run

METHODS = ("vanilla", "soft_patchup", "hard_patchup", "mixup")
PRESET = ["--archs", "preactresnet18", "wrn28_10", "--methods", *METHODS, "--precisions",
          "float32", "mixed_bfloat16", "--xla", "off", "on", "--steps", "10", "--windows", "3",
          "--warmup", "3", "--pipelines", "--memory_methods", "--timeout", "100",
          "--budget", os.environ.get("GPU_BENCH_BUDGET_S", "420"),
          "--out", os.environ.get("OUT", "gpu_bench_out")]


def _parser():
    p = run.build_parser()
    p.add_argument("--impls", nargs="+", choices=("tf", "torch"), default=["tf", "torch"],
                   help="patchup_tf (tf) and/or the PyTorch original (torch)")
    return p


def main(argv=None):
    from patchup_tf.files import write_json, write_text

    argv = PRESET + list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    options = run.options_from_args(args)
    options.setdefault("torch_methods", options["methods"])
    options.update(methods=options["methods"] if "tf" in args.impls else (),
                   against_torch="torch" in args.impls and bool(args.torch_original))
    results = run.run_benchmark(log=lambda m: print(m, file=sys.stderr, flush=True), **options)
    results["settings"].update(impls=args.impls, argv=argv)
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "gpu_results.json"), results)
    write_text(os.path.join(args.out, "gpu_results.md"), run.format_table(results) + "\n")
    print(run.format_table(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
