"""Speed benchmark of patchup_tf: train-step throughput per method, precision
and XLA setting, the input pipeline alone, peak memory; a table and a JSON.

    python scripts/benchmark.py                       # the full run (~10 min, 2 cores)
    python scripts/benchmark.py --tiny --out tiny.json  # CI smoke run (< 60 s)
    python scripts/benchmark.py --methods vanilla soft_patchup --precisions float32 \
        --xla off --isolate                           # per-config peak RSS

See `patchup_tf.benchmark` for what is measured and how.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from patchup_tf.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
