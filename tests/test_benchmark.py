"""The speed benchmark: `scripts/benchmark.py --tiny` runs, its JSON is complete,
and the worker coordination (`--against-torch`, `--worker_env`, `--isolate`)
works, with fake workers where torch is not installed."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from patchup_tf import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "benchmark.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def run_script(out, *args, timeout=600):
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Runs the CI configuration once: `--tiny` (vanilla + soft_patchup, batch 8)."""
    results, stdout, _ = run_script(tmp_path_factory.mktemp("bench") / "tiny.json")
    return results, stdout


def test_tiny_machine_and_settings(tiny):
    results, _ = tiny
    machine = results["machine"]
    for key in ("date", "cpu_model", "cores", "tensorflow", "keras", "gpus"):
        assert key in machine
    assert machine["cores"] >= 1
    assert results["settings"]["tiny"] is True
    assert results["settings"]["batch_size"] == benchmark.TINY["batch_size"]
    assert results["settings"]["mode"] == "in-process"


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
        assert r["batchnorm"] == "fused" and r["input"] == "batches" and r["impl"] == "patchup_tf"
        assert r["logits_dtype"] == "float32"
        assert r["ratio_to_vanilla"] > 0
        assert r["retraces"] == 0, "train_step retraced after warm-up"
        assert r["tf_function_retraces"] == 0
        assert r["tf_function_traces"] >= 1
        assert r["peak_rss_mb"] > 0
    assert rows[0]["ratio_to_vanilla"] == pytest.approx(1.0)
    assert "meets_patchup_target" in rows[1] and "meets_patchup_cpu_target" in rows[1]


def test_tiny_pipeline_rows_use_the_trainer_stream(tiny):
    results, _ = tiny
    kinds = [p["pipeline"] for p in results["pipeline"]]
    assert kinds == ["digits", "synthetic"]
    for p in results["pipeline"]:
        assert "error" not in p, p
        assert "train_epochs" in p["name"]
        assert p["img_per_s"] > 0
        assert p["ratio_to_fastest_model"] > 0
        assert p["cpu_ms_per_batch"] >= 0
    assert results["fastest_train_config"]["img_per_s"] > 0


def test_tiny_prints_table(tiny):
    _, stdout = tiny
    assert "x van" in stdout and "soft_patchup" in stdout and "img/s" in stdout


def test_workers_batchnorms_trainer_input_mix_ops_and_torch(tmp_path):
    """`--against-torch` (skipped without torch) moves the configs to a worker;
    both BatchNorm kinds; the trainer's stream as input; the mixing ops."""
    args = ["--methods", "soft_patchup", "--batchnorm", "fused", "keras", "--input", "trainer",
            "--against-torch", "--mix_ops", "--pipelines"]
    results, stdout, _ = run_script(tmp_path / "w.json", *args)
    assert results["settings"]["mode"] == "workers"
    ours = [r for r in results["train"] if r["impl"] == "patchup_tf"]
    assert [(r["batchnorm"], r["input"]) for r in ours] == [("fused", "trainer"),
                                                            ("keras", "trainer")]
    for r in ours:
        assert "error" not in r, r
        assert r["img_per_s"] > 0 and r["cpu_s_per_step"] > 0 and r["retraces"] == 0
        assert r["input_name"] == "train_epochs"
        assert len(r["img_per_s_windows"]) == benchmark.TINY["windows"]
        assert r["process_peak_rss_mb"] > 0
    (worker,) = [w for w in results["workers"] if w["name"] == "patchup_tf"]
    assert worker["tensorflow"]
    torch_rows = [r for r in results["train"] if r["impl"] == "torch_original"]
    try:
        import torch  # noqa: F401
    except ImportError:
        assert torch_rows == [] and results["torch_skipped"]
        assert "PyTorch original: skipped" in stdout
    else:
        assert torch_rows and all("error" not in r for r in torch_rows)
        assert ours[0]["x_torch_img_per_s"] > 0
        assert [m["impl"] for m in results["memory"]] == ["patchup_tf", "torch_original"]
    modes = {(r["mode"], r["position"], r["xla"]) for r in results["mix_ops"]}
    assert modes == {(m, p, x) for m in ("identity", "soft", "hard") for p in (1, 2, 3, 4)
                     for x in (False, True)}
    assert all("error" not in r and r["ms_per_call"] > 0 for r in results["mix_ops"])
    assert "PatchUp's own ops" in stdout


def test_isolate_with_environment_variants(tmp_path):
    args = ["--methods", "vanilla", "--isolate", "--pipelines",
            "--worker_env", "TF_ENABLE_ONEDNN_OPTS=0", "TF_ENABLE_ONEDNN_OPTS=1"]
    results, _, _ = run_script(tmp_path / "i.json", *args)
    rows = results["train"]
    assert [r["variant"] for r in rows] == ["TF_ENABLE_ONEDNN_OPTS=0", "TF_ENABLE_ONEDNN_OPTS=1"]
    for r in rows:
        assert "error" not in r, r
        assert r["peak_rss_mb"] > 100 and "subprocess" in r["rss_scope"]
        # Each variant is its own vanilla baseline.
        assert r["ratio_to_vanilla"] == pytest.approx(1.0)


def test_bad_environment_variant():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        benchmark._parse_env("TF_ENABLE_ONEDNN_OPTS")
    assert benchmark._parse_env("A=1, B=x=y") == {"A": "1", "B": "x=y"}


# ----------------------------------------------------- workers, faked
FAKE_WORKER = textwrap.dedent('''
    import json, os, sys, time
    log, behaviour = sys.argv[1], sys.argv[2]
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    print("library noise on stdout goes to stderr")
    job = json.loads(sys.stdin.readline())
    if behaviour == "crash":
        raise SystemExit("cannot start: no such thing")
    if behaviour == "hang":
        time.sleep(60)
    rate = float(behaviour)
    ready = [{"ok": c["method"] != "bad", "build_s": 0.1, "warmup_s": 0.2,
              "error": "ValueError: bad method"} for c in job["configs"]]
    out.write(json.dumps({"ready": ready, "info": {"fake": True}}) + "\\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "window":
            with open(log, "a") as f:
                f.write(f"{job['configs'][cmd['config']]['method']}@{behaviour}\\n")
            out.write(json.dumps({"img_per_s": rate, "wall_s": 1.0,
                                  "cpu_s": 2.0 * cmd["steps"] / rate, "peak_rss_mb": 10}) + "\\n")
        else:
            results = [{**c, "img_per_s": rate, "peak_rss_mb": 10} for c in job["configs"]]
            out.write(json.dumps({"results": results, "process_peak_rss_mb": 12}) + "\\n")
            break
''')


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    log = tmp_path / "order.txt"

    def command(behaviour):
        return [sys.executable, str(script), str(log), behaviour]

    return command, log


def _configs(impl, *methods):
    return [benchmark.make_config("preactresnet18", m, "float32", False, impl=impl)
            for m in methods]


def test_workers_interleave_windows_and_collect_rows(fake):
    command, log = fake
    ours = _configs("patchup_tf", "vanilla", "soft_patchup")
    theirs = _configs("torch_original", "soft_patchup")
    rows, info = benchmark.bench_workers(
        [(command("100"), {"X": "1"}, ours, "patchup_tf"),
         (command("50"), {}, theirs, "torch_original")],
        batch_size=4, steps=2, warmup=1, windows=3, log=lambda m: None)
    order = log.read_text().split()
    # window by window, rotating: every config once per window
    assert len(order) == 9
    for w in range(3):
        assert sorted(order[3 * w:3 * w + 3]) == ["soft_patchup@100", "soft_patchup@50",
                                                  "vanilla@100"]
    assert order[0] != order[3]  # the order rotates
    assert [r["impl"] for r in rows] == ["patchup_tf", "patchup_tf", "torch_original"]
    assert [r["img_per_s"] for r in rows] == [100.0, 100.0, 50.0]
    assert rows[2]["cpu_s_per_step"] == pytest.approx(2.0 / 50)
    assert all(r["process_peak_rss_mb"] > 0 for r in rows)
    assert info[0]["env"] == {"X": "1"} and info[0]["fake"] is True


def test_a_failing_worker_does_not_stop_the_others(fake):
    command, _ = fake
    rows, info = benchmark.bench_workers(
        [(command("crash"), {}, _configs("torch_original", "vanilla"), "crashes"),
         (command("7"), {}, _configs("patchup_tf", "bad", "vanilla"), "ok"),
         (command("hang"), {}, _configs("patchup_tf", "vanilla"), "hangs")],
        batch_size=4, steps=1, warmup=1, windows=2, start_timeout=5, log=lambda m: None)
    assert "cannot start" in rows[0]["error"]
    assert "bad method" in rows[1]["error"]
    assert rows[2]["img_per_s"] == 7.0 and "error" not in rows[2]
    assert "no answer within 5 s" in rows[3]["error"]
    assert [bool(i.get("error")) for i in info] == [True, False, True]


def test_run_isolated_reports_the_childs_peak(fake):
    command, _ = fake
    row = benchmark.run_isolated(_configs("torch_original", "soft_patchup")[0], command=command("3"),
                                 batch_size=4, steps=1, warmup=1, windows=1, log=lambda m: None)
    assert row["img_per_s"] == 3.0 and row["peak_rss_mb"] > 0 and "wait4" in row["rss_scope"]


def test_torch_status_without_torch(monkeypatch):
    monkeypatch.setattr(benchmark.importlib.util, "find_spec", lambda name: None)
    ok, detail = benchmark.torch_status()
    assert not ok and "pip install torch" in detail
    ok, detail = benchmark.torch_status(os.path.join(ROOT, "no", "such", "python"))
    assert not ok


def test_torch_job_configs_carry_the_paper_options():
    (soft, hard) = benchmark.torch_job_configs(_configs("torch_original", "soft_patchup",
                                                        "hard_patchup"))
    assert soft["options"]["gamma"] == pytest.approx(0.75)
    assert soft["options"]["patchup_prob"] == pytest.approx(1.0)
    assert hard["options"]["patchup_prob"] == pytest.approx(0.7)
    assert soft["options"]["k"] == 2 and soft["num_classes"] == 10


@pytest.mark.skipif(not os.path.exists(os.path.join(benchmark.TORCH_DIR, "worker.py")),
                    reason="no vendored original")
def test_vendored_original_keeps_its_license():
    with open(os.path.join(benchmark.TORCH_DIR, "patchup_original.py")) as f:
        head = f.read(3000)
    assert "MIT License" in head and "Copyright (c) 2020 chandar-lab" in head
    assert "github.com/chandar-lab/PatchUp" in head


# ------------------------------------------------------------ ratios, table
def _row(impl, method, precision, rate, cpu, xla=False):
    return {"impl": impl, "arch": "preactresnet18", "method": method, "precision": precision,
            "xla": xla, "batchnorm": "fused" if impl == "patchup_tf" else None,
            "input": "batches", "variant": "", "img_per_s": rate, "step_ms": 4000 / rate,
            "img_per_s_windows": [rate], "cpu_util_windows": [2.0], "cpu_s_per_step": cpu,
            "retraces": 0 if impl == "patchup_tf" else None, "peak_rss_mb": 1.0}


def fake_results():
    return {
        "machine": {"date": "d", "cpu_model": "cpu", "cpu_flags": [], "cores": 2, "gpus": [],
                    "python": "3", "tensorflow": "2", "keras": "3", "intra_op_threads": 0,
                    "inter_op_threads": 0, "env": {}},
        "settings": {"batch_size": 4, "steps": 1, "windows": 1, "warmup": 1,
                     "timer": "function", "isolate": False, "rss_scope": "process",
                     "mode": "workers"},
        "train": [
            _row("patchup_tf", "vanilla", "float32", 100.0, 3.0),
            _row("patchup_tf", "soft_patchup", "float32", 96.0, 3.09),
            _row("patchup_tf", "hard_patchup", "float32", 90.0, 3.3),
            _row("patchup_tf", "vanilla", "mixed_bfloat16", 50.0, 2.0),
            _row("patchup_tf", "soft_patchup", "mixed_bfloat16", 200.0, 1.0),
            _row("torch_original", "vanilla", "float32", 70.0, 4.0),
            _row("torch_original", "soft_patchup", "float32", 60.0, 4.2),
            _row("torch_original", "hard_patchup", "float32", 80.0, 4.0),
            {"impl": "patchup_tf", "arch": "preactresnet18", "method": "vanilla",
             "precision": "float32", "xla": True, "error": "InvalidArgumentError: no XLA kernel"},
        ],
        "memory": [{**_row("patchup_tf", "soft_patchup", "float32", 1, 1), "peak_rss_mb": 1500.0},
                   {**_row("torch_original", "soft_patchup", "float32", 1, 1),
                    "peak_rss_mb": 1200.0}],
        "pipeline": [{"pipeline": "digits", "name": "digits", "img_per_s": 6000.0,
                      "cpu_ms_per_batch": 1.0, "peak_rss_mb": 1.0}],
        "workers": [{"name": "torch_original", "torch": "2.x", "torch_threads": 2}],
    }


def test_ratios_and_table_from_fake_results():
    results = benchmark.add_ratios(fake_results())
    v32, soft32, hard32, v16, soft16, tv, tsoft, thard = results["train"][:8]
    assert soft32["ratio_to_vanilla"] == pytest.approx(0.96)
    assert soft32["meets_patchup_target"] is True  # 1/0.96 = +4.2%
    assert soft32["meets_patchup_cpu_target"] is True  # +3%
    assert hard32["meets_patchup_target"] is False  # +11%
    assert soft16["ratio_to_vanilla"] == pytest.approx(4.0)  # bf16 vanilla is its baseline
    assert tsoft["ratio_to_vanilla"] == pytest.approx(60 / 70)  # the original's own baseline
    assert "meets_patchup_target" not in tsoft
    # against the original (same method, float32)
    assert soft32["x_torch_img_per_s"] == pytest.approx(96 / 60)
    assert soft32["x_torch_cpu"] == pytest.approx(4.2 / 3.09)
    assert soft32["meets_torch_target"] is True  # 1.6 >= 1.2
    assert hard32["x_torch_img_per_s"] == pytest.approx(90 / 80)
    assert hard32["meets_torch_target"] is False  # 1.125 < 1.2
    assert soft16["x_torch_img_per_s"] == pytest.approx(200 / 60)
    assert soft16["torch_target"] == 2.5 and soft16["meets_torch_target"] is True
    assert "meets_torch_target" not in v32 and v32["x_torch_img_per_s"] == pytest.approx(100 / 70)
    assert results["memory"][0]["x_torch_peak_rss"] == pytest.approx(1.25)
    # the fastest of ours (not the original's) sets the pipeline ratio
    assert results["fastest_train_config"]["img_per_s"] == 200.0
    assert results["pipeline"][0]["ratio_to_fastest_model"] == pytest.approx(30.0)
    assert results["pipeline"][0]["meets_pipeline_target"] is True
    table = benchmark.format_table(results)
    assert "ERROR" in table and "x30" in table and "torch_original" in table
    assert ">=1.2x torch NO" in table and ">=2.5x torch ok" in table
    assert "x1.25 the original's" in table


def test_old_style_config_tuples_still_work():
    c = benchmark.as_config(("wrn28_2", "mixup", "mixed_bfloat16", True))
    assert c["arch"] == "wrn28_2" and c["xla"] is True and c["batchnorm"] == "fused"
    assert "bn=fused" in benchmark.config_label(c)


def test_peak_rss_helpers():
    assert benchmark.peak_rss_mb() > 0
    benchmark.reset_peak_rss()  # best effort; must not raise
    assert benchmark.peak_rss_mb() > 0


# ------------------------------------------------------- the GPU script, faked
FAKE_LAZY_WORKER = textwrap.dedent('''
    import json, os, sys, time
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    job = json.loads(sys.stdin.readline())
    assert job["lazy"]
    out.write(json.dumps({"ready": [], "info": {"fake": True}}) + "\\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        config = job["configs"][cmd.get("config", 0)]
        if cmd["cmd"] == "build":
            if config["method"] == "cutout":  # stands for a config that hangs
                time.sleep(60)
            ok = config["method"] != "dropblock"
            out.write(json.dumps({"ok": ok, "build_s": 0.1, "warmup_s": 0.1,
                                  "error": "ValueError: no such kernel"}) + "\\n")
        elif cmd["cmd"] == "window":
            out.write(json.dumps({"img_per_s": 100.0 if config["method"] == "vanilla" else 90.0,
                                  "wall_s": 1.0, "cpu_s": 1.0, "peak_rss_mb": 1}) + "\\n")
        elif cmd["cmd"] == "result":
            out.write(json.dumps({"result": {**config, "gpu_peak_mb": 5.0}}) + "\\n")
        else:
            out.write(json.dumps({"results": [], "process_peak_rss_mb": 1}) + "\\n")
            break
''')


def _gpu_bench_module(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_bench_under_test", os.path.join(ROOT, "benchmarks", "gpu_bench.py"))
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    bench = gpu.load_benchmark_module()
    script = tmp_path / "fake_lazy_worker.py"
    script.write_text(FAKE_LAZY_WORKER)
    monkeypatch.setattr(bench, "tf_worker_command", lambda python=None: [sys.executable, str(script)])
    monkeypatch.setattr(bench, "torch_status", lambda python=None: (False, "not in this test"))
    monkeypatch.setattr(gpu, "load_benchmark_module", lambda: bench)
    return gpu, bench


def test_gpu_script_loads_the_benchmark_without_tensorflow():
    """On a GPU machine with torch but no TensorFlow, `gpu_bench.py --impls
    torch` still times the original: its process loads patchup_tf/benchmark.py
    (and the machine helpers) without importing TensorFlow or the package."""
    code = (
        "import importlib.util, sys\n"
        "sys.modules['tensorflow'] = None  # any import of it fails\n"
        f"spec = importlib.util.spec_from_file_location('g', {os.path.join(ROOT, 'benchmarks', 'gpu_bench.py')!r})\n"
        "gpu = importlib.util.module_from_spec(spec); spec.loader.exec_module(gpu)\n"
        "bench = gpu.load_benchmark_module()\n"
        "assert bench.cpu_model() and bench.cpu_count() >= 1\n"
        "assert 'patchup_tf' not in sys.modules, sorted(sys.modules)\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_gpu_script_times_out_one_config_and_goes_on(tmp_path, monkeypatch):
    import argparse
    import time

    gpu, bench = _gpu_bench_module(tmp_path, monkeypatch)
    args = argparse.Namespace(batch_size=4, warmup=1, steps=1, windows=2, config_timeout=4,
                              min_config_s=0.5, start_timeout=30)
    group = ("tf", "preactresnet18", "float32", False,
             ("vanilla", "cutout", "dropblock", "soft_patchup"))
    rows = gpu.run_group(bench, group, args=args, end=time.monotonic() + 120, torch_python=None,
                         log=lambda m: None)
    assert [r["method"] for r in rows] == ["vanilla", "cutout", "dropblock", "soft_patchup"]
    assert rows[0]["img_per_s"] == 100.0 and rows[0]["gpu_peak_mb"] == 5.0
    assert "no answer within" in rows[1]["error"]  # timed out; its worker was replaced
    assert "no such kernel" in rows[2]["error"]
    assert rows[3]["img_per_s"] == 90.0 and "error" not in rows[3]
    # Out of budget: skipped, not started.
    rows = gpu.run_group(bench, group, args=args, end=time.monotonic() + 0.2, torch_python=None,
                         log=lambda m: None)
    assert [r.get("skipped") for r in rows] == ["time budget"] * 4


def test_gpu_script_writes_its_table(tmp_path, monkeypatch):
    gpu, _ = _gpu_bench_module(tmp_path, monkeypatch)
    out = tmp_path / "out"
    assert gpu.main(["--out", str(out), "--archs", "preactresnet18", "--methods", "vanilla",
                     "soft_patchup", "--steps", "1", "--windows", "1", "--budget", "100"]) == 0
    with open(out / "gpu_results.json") as f:
        results = json.load(f)
    rows = results["rows"]
    # float32, bf16, bf16 + XLA, float32 + XLA; no torch here
    assert {(r["precision"], r["xla"]) for r in rows} == {
        ("float32", False), ("mixed_bfloat16", False), ("mixed_bfloat16", True),
        ("float32", True)}
    soft = [r for r in rows if r["method"] == "soft_patchup"]
    assert all(r["x_vanilla"] == pytest.approx(0.9) for r in soft)
    table = (out / "gpu_results.md").read_text()
    assert "| preactresnet18 | patchup_tf | soft_patchup | mixed_bfloat16 | on | 90 |" in table
    assert (out / "gpu_log.txt").exists()
