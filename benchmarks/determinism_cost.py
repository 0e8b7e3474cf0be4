"""What `--deterministic True` costs per training step: `python -m benchmarks`
with worker environments `TF_DETERMINISTIC_OPS=0` and `=1` (the worker then
calls `enable_op_determinism`, as the trainer does), WRN-28-2 hard PatchUp
on the trainer's stream; flags given here win. `x var`: the second's img/s
over the first's. `python -m benchmarks.determinism_cost [--archs A ...]`"""

import sys

from benchmarks import run

PRESET = ["--archs", "wrn28_2", "--methods", "hard_patchup", "--precisions", "float32",
          "--xla", "default", "--input", "trainer", "--steps", "5", "--windows", "7",
          "--pipelines", "--out", "determinism_cost.json",
          "--worker_env", "TF_DETERMINISTIC_OPS=0", "TF_DETERMINISTIC_OPS=1"]
_parser = run.build_parser


def main(argv=None):
    return run.main(PRESET + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
