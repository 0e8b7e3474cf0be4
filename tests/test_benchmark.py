"""The speed benchmark: `scripts/benchmark.py --tiny` runs and its JSON is complete."""

import json
import os
import subprocess
import sys

import pytest

from patchup_tf import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "benchmark.py")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Runs the CI configuration once: `--tiny` (vanilla + soft_patchup, batch 8)."""
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


def test_tiny_machine_and_settings(tiny):
    results, _ = tiny
    machine = results["machine"]
    for key in ("date", "cpu_model", "cores", "tensorflow", "keras", "gpus"):
        assert key in machine
    assert machine["cores"] >= 1
    assert results["settings"]["tiny"] is True
    assert results["settings"]["batch_size"] == benchmark.TINY["batch_size"]


def test_tiny_train_rows(tiny):
    results, _ = tiny
    rows = results["train"]
    assert [r["method"] for r in rows] == list(benchmark.TINY["methods"])
    for r in rows:
        assert "error" not in r, r
        assert r["img_per_s"] > 0 and r["step_ms"] > 0
        assert len(r["img_per_s_windows"]) == benchmark.TINY["windows"]
        assert all(v > 0 for v in r["img_per_s_windows"])
        assert r["precision"] == "float32" and r["xla"] is False
        assert r["ratio_to_vanilla"] > 0
        assert r["retraces"] == 0, "train_step retraced after warm-up"
        assert r["tf_function_retraces"] == 0
        assert r["tf_function_traces"] >= 1
        assert r["peak_rss_mb"] > 0
    assert rows[0]["ratio_to_vanilla"] == pytest.approx(1.0)
    assert "meets_patchup_target" in rows[1]


def test_tiny_pipeline_rows(tiny):
    results, _ = tiny
    kinds = [p["pipeline"] for p in results["pipeline"]]
    assert kinds == ["digits", "synthetic"]
    for p in results["pipeline"]:
        assert "error" not in p, p
        assert p["img_per_s"] > 0
        assert p["ratio_to_fastest_model"] > 0
        assert p["cpu_ms_per_batch"] >= 0
    assert results["fastest_train_config"]["img_per_s"] > 0


def test_tiny_prints_table(tiny):
    _, stdout = tiny
    assert "x vanilla" in stdout and "soft_patchup" in stdout and "img/s" in stdout


def test_ratios_and_table_from_fake_results():
    fake = {
        "machine": {"date": "d", "cpu_model": "cpu", "cpu_flags": [], "cores": 2, "gpus": [],
                    "python": "3", "tensorflow": "2", "keras": "3", "intra_op_threads": 0,
                    "inter_op_threads": 0, "env": {}},
        "settings": {"batch_size": 4, "steps": 1, "windows": 1, "warmup": 1,
                     "timer": "function", "isolate": False, "rss_scope": "process"},
        "train": [
            {"arch": "a", "method": m, "precision": p, "xla": False, "img_per_s": v,
             "step_ms": 4000 / v, "img_per_s_windows": [v], "cpu_util_windows": [2.0],
             "retraces": 0, "tf_function_retraces": 0, "warmup_s": 1.0, "peak_rss_mb": 1.0}
            for m, p, v in [("vanilla", "float32", 100.0), ("soft_patchup", "float32", 96.0),
                            ("hard_patchup", "float32", 90.0), ("vanilla", "mixed_bfloat16", 50.0),
                            ("soft_patchup", "mixed_bfloat16", 25.0)]
        ] + [{"arch": "a", "method": "vanilla", "precision": "float32", "xla": True,
              "error": "InvalidArgumentError: no XLA kernel"}],
        "pipeline": [{"pipeline": "digits", "name": "digits", "img_per_s": 3000.0,
                      "cpu_ms_per_batch": 1.0, "peak_rss_mb": 1.0}],
    }
    results = benchmark.add_ratios(fake)
    soft32, hard32, soft16 = results["train"][1], results["train"][2], results["train"][4]
    assert soft32["ratio_to_vanilla"] == pytest.approx(0.96)
    assert soft32["meets_patchup_target"] is True  # 1/0.96 = +4.2%
    assert hard32["meets_patchup_target"] is False  # +11%
    assert soft16["ratio_to_vanilla"] == pytest.approx(0.5)  # bf16 vanilla is its baseline
    assert results["fastest_train_config"]["img_per_s"] == 100.0
    assert results["pipeline"][0]["ratio_to_fastest_model"] == pytest.approx(30.0)
    assert results["pipeline"][0]["meets_pipeline_target"] is True
    table = benchmark.format_table(results)
    assert "ERROR" in table and ">5%" in table and "x30" in table


def test_peak_rss_helpers():
    assert benchmark.peak_rss_mb() > 0
    benchmark.reset_peak_rss()  # best effort; must not raise
    assert benchmark.peak_rss_mb() > 0
