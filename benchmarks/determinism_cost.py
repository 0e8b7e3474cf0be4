"""What `--deterministic True` costs per training step, against `False`:
`python -m benchmarks` with two worker environments, `TF_DETERMINISTIC_OPS=0`
and `=1` (the worker then calls `enable_op_determinism`, as the trainer
does), their windows interleaved; the trainer's input stream (`--input
trainer`), WRN-28-2 hard PatchUp float32, 7 windows x 5 steps. Any flag of
`python -m benchmarks` given here wins over these; `x var` is the
deterministic row's img/s over the other's.

    python -m benchmarks.determinism_cost [--archs wrn28_2] [--methods hard_patchup]
"""

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
