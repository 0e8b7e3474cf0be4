"""The speed benchmark (`python -m benchmarks`): one real run (each Keras
backend in its own worker, the PyTorch original from a fake checkout, an
input pipeline), the worker protocol's failure modes with a fake worker, the
ratios and report, the CLI's checks, and the GPU preset without TensorFlow."""

import glob
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from benchmarks import configs, machine, report, run
from benchmarks import torch_original as original
from benchmarks.workers import bench_each, bench_workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_CHECKOUT = {
    "main.py": '''
        """The original's main.py as the worker uses it, with `np.int` and a top-k `view`."""
        import argparse, json, os
        import numpy as np
        import torch
        import models
        device = torch.device("cpu")
        parser = argparse.ArgumentParser()
        for flag, kind, default in (("--train", str, "vanilla"), ("--arch", str, ""),
                                    ("--patchup_type", str, ""), ("--gamma", float, 0.9),
                                    ("--patchup_prob", float, 0.7), ("--alpha", float, 0.0),
                                    ("--k", int, 2), ("--patchup_block", int, 7),
                                    ("--batch_size", int, 100), ("--drop_block", int, 7),
                                    ("--keep_prob", float, 0.9), ("--learning_rate", float, 0.1),
                                    ("--momentum", float, 0.9), ("--decay", float, 1e-4)):
            parser.add_argument(flag, type=kind, default=default)
        parser.add_argument("--loss_params", type=int, nargs="+", default=[1, 1])
        parser.add_argument("--dropout", action="store_true")
        args = parser.parse_args()

        def accuracy(output, target, topk=(1,)):
            pred = output.topk(max(topk), 1, True, True)[1].t()
            correct = pred.eq(target.view(1, -1).expand_as(pred))
            return [correct[:k].view(-1).float().sum(0) for k in topk]

        def train(loader, model, optimizer, epoch, args, log):
            for input, target in loader:
                loss = torch.nn.functional.cross_entropy(model(input), target)
                prec1, prec5 = accuracy(model(input), target, topk=(1, 5))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                np.int(3.0)
            with open(os.environ["FAKE_LOG"], "a") as f:
                f.write(json.dumps({"train": args.train, "steps": len(loader),
                                    "type": args.patchup_type, "gamma": args.gamma,
                                    "prob": args.patchup_prob, "alpha": args.alpha,
                                    "prec": [float(prec1), float(prec5)]}) + "\\n")
    ''',
    "models/__init__.py": "from .preresnet import preactresnet18\n",
    "models/preresnet.py": '''
        import torch

        def preactresnet18(num_classes, *options):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, num_classes))
    ''',
    "modules/patchup.py": "",
}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    root = tmp_path_factory.mktemp("PatchUp")
    for path, text in FAKE_CHECKOUT.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(textwrap.dedent(text))
    return root


@pytest.fixture(scope="module")
def real(checkout, tmp_path_factory):
    """One small real run, shared: vanilla on Keras' TensorFlow and PyTorch backends (JAX's
    worker is the same code), soft PatchUp and Mixup of the original, a pipeline."""
    pytest.importorskip("torch")
    log = tmp_path_factory.mktemp("calls") / "calls.jsonl"
    os.environ["FAKE_LOG"] = str(log)
    try:
        results = run.run_benchmark(
            log=lambda m: None, methods=("vanilla",), precisions=("float32",), xla=("off",),
            backends=("tensorflow", "torch"), batch_size=2, steps=1,
            warmup=1, windows=2, timer="fit", pipelines=("synthetic",), pipeline_batches=2,
            synthetic_images=16, against_torch=True, torch_original=str(checkout),
            torch_methods=("soft_patchup", "mixup"), memory_methods=())
    finally:
        del os.environ["FAKE_LOG"]
    return results, [json.loads(line) for line in log.read_text().splitlines()]


def test_each_backend_in_its_own_worker(real):
    results, _ = real
    rows = {r["backend"]: r for r in results["train"] if r["impl"] == "patchup_tf"}
    assert sorted(rows) == ["tensorflow", "torch"]
    for backend, r in rows.items():
        assert not r.get("error"), r
        assert r["img_per_s"] > 0 and r["cpu_s_per_step"] > 0 and len(r["img_per_s_windows"]) == 2
        assert r["step_ms"] == pytest.approx(1000.0 * 2 / r["img_per_s"])
        assert r["cpu_util_windows"] == [round(c / (2 / v), 2) for c, v in zip(
            r["cpu_s_per_step_windows"], r["img_per_s_windows"])]
        assert r["tensorflow_loaded"] == (backend == "tensorflow") and r["timer"] == "fit"
        assert r["x_tf_img_per_s"] == pytest.approx(
            r["img_per_s"] / rows["tensorflow"]["img_per_s"])
        assert r["ratio_to_vanilla"] == pytest.approx(1.0) and r["peak_rss_mb"] > 0
    assert rows["tensorflow"]["retraces"] == 0 and rows["torch"]["retraces"] is None
    assert rows["tensorflow"]["logits_dtype"] == "float32"
    assert [w.get("backend") for w in results["workers"]] == ["tensorflow", "torch", None]
    assert {w["env"].get("KERAS_BACKEND") for w in results["workers"][:2]} == set(rows)


def test_the_original_runs_from_a_checkout(real, checkout):
    """Each config loads the checkout's main.py with its own flags; its `train`
    runs the warm-up, then `steps` steps per window; `np.int` and the top-k
    `view` are patched in the worker."""
    results, calls = real
    theirs = [r for r in results["train"] if r["impl"] == "torch_original"]
    assert [r["method"] for r in theirs] == ["soft_patchup", "mixup"]
    assert all(r["img_per_s"] > 0 and r["device"] == "cpu" for r in theirs), theirs
    assert results["workers"][2]["checkout"] == str(checkout)
    soft = [c for c in calls if c["train"] == "patchup"]
    assert [c["steps"] for c in soft] == [1, 1, 1]
    assert soft[0]["type"] == "soft" and soft[0]["gamma"] == 0.75 and soft[0]["prob"] == 1.0
    assert [c["alpha"] for c in calls if c["train"] == "mixup"] == [1.0] * 3
    assert all(0 <= c["prec"][0] <= c["prec"][1] <= 100 for c in calls)
    ours = [r for r in results["train"] if r["impl"] == "patchup_tf"]
    assert all("x_torch_img_per_s" not in r for r in ours)  # the original has no vanilla here


def test_the_pipeline_machine_and_report(real):
    results, _ = real
    (p,) = results["pipeline"]
    assert "train_epochs" in p["name"] and p["img_per_s"] > 0
    assert p["ratio_to_fastest_model"] == pytest.approx(
        p["img_per_s"] / max(r["img_per_s"] for r in results["train"]
                             if r["impl"] == "patchup_tf"))
    m = results["machine"]
    assert set(m["cpu_flags"]) == set(machine.CPU_FLAGS_SHOWN) & set(machine.cpu_flags())
    assert m["onednn_opts"] == os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
    assert m["versions"]["keras"] and m["cores"] >= 1
    table = report.format_table(results)
    assert table.count("| patchup_tf |") == 2 and table.count("| torch_original |") == 2


# ------------------------------------------------- the protocol's failure modes
FAKE_WORKER = textwrap.dedent('''
    import json, os, sys, time
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    print("library noise on stdout goes to stderr")
    behaviour, log = sys.argv[1], sys.argv[2]
    job = json.loads(sys.stdin.readline())
    if behaviour == "crash":
        raise SystemExit("cannot start: no such thing")
    time.sleep(60 if behaviour == "hang" else 0)
    out.write(json.dumps({"info": {"fake": behaviour}}) + "\\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "finish":
            break
        c = job["configs"][cmd["config"]]
        if cmd["cmd"] == "build":
            time.sleep(60 if c["method"] == "cutout" else 0)
            answer = {"ok": c["method"] != "bad", "error": "ValueError: bad method",
                      "build_s": 0, "warmup_s": 0}
        elif cmd["cmd"] == "window":
            with open(log, "a") as f:
                f.write(f"{c['method']}@{behaviour}\\n")
            wall = job["batch_size"] / float(behaviour)
            answer = {"img_per_s": 0, "wall_s": wall, "cpu_s": 2 * wall, "peak_rss_mb": 1}
        else:
            answer = {"result": {**c, "fake": True}}
        out.write(json.dumps(answer) + "\\n")
''')
JOB = {"batch_size": 4, "warmup": 1, "timer": "function", "synthetic_images": 8}


@pytest.fixture
def fake(tmp_path):
    (tmp_path / "fake.py").write_text(FAKE_WORKER)

    def group(behaviour, *methods, env=None):
        return ([sys.executable, str(tmp_path / "fake.py"), behaviour, str(tmp_path / "log")],
                env or {}, [configs.make_config(method=m) for m in methods], behaviour)

    return group, tmp_path / "log"


def test_windows_interleave_and_failures_stay_in_their_rows(fake):
    group, log = fake
    rows, info = bench_workers(
        [group("100", "vanilla", "soft_patchup", env={"X": "1"}), group("50", "soft_patchup"),
         group("crash", "vanilla"), group("hang", "vanilla"), group("7", "bad")],
        JOB, windows=3, steps=2, timeout=3, log=lambda m: None)
    order = log.read_text().split()
    assert len(order) == 9 and order[0] != order[3]  # every config once per window, rotating
    assert all(sorted(order[3 * w:3 * w + 3]) == ["soft_patchup@100", "soft_patchup@50",
                                                  "vanilla@100"] for w in range(3))
    assert [r.get("img_per_s") for r in rows[:3]] == [100.0, 100.0, 50.0]
    assert rows[2]["cpu_s_per_step"] == pytest.approx(2 * 4 / 50)
    assert rows[2]["cpu_util_windows"] == [2.0] * 3 and rows[2]["fake"] is True
    assert all(r["process_peak_rss_mb"] > 0 for r in rows[:3])
    assert ["cannot start" in rows[3]["error"], "no answer within 3 s" in rows[4]["error"],
            "bad method" in rows[5]["error"]] == [True] * 3
    assert info[0]["env"] == {"X": "1"} and info[0]["fake"] == "100"
    assert [bool(i.get("error")) for i in info] == [False, False, True, True, False]


def test_one_at_a_time_isolated_or_within_a_budget(fake):
    group, _ = fake
    timing = {"windows": 2, "steps": 1, "log": lambda m: None}
    rows, _ = bench_each([group("9", "vanilla", "cutout", "bad", "soft_patchup")], JOB,
                         timeout=2, end=time.monotonic() + 60, **timing)
    assert rows[0]["img_per_s"] == 9.0 and "no answer within 2 s" in rows[1]["error"]
    assert "bad method" in rows[2]["error"]
    assert rows[3]["img_per_s"] == 9.0  # in a fresh worker
    rows, _ = bench_each([group("9", "vanilla")], JOB, timeout=9, end=time.monotonic(), **timing)
    assert rows[0]["skipped"] == "time budget"
    rows, info = bench_each([group("3", "vanilla", "soft_patchup")], JOB, timeout=9, fresh=True,
                            **timing)
    assert all(r["img_per_s"] == 3.0 and r["peak_rss_mb"] > 0 for r in rows)
    assert "wait4" in rows[0]["rss_scope"] and len(info) == 2  # one fresh worker each


# ------------------------------------------------------------ ratios, report
def _row(impl, method, precision, rate, cpu, **extra):
    return {"impl": impl, "arch": "preactresnet18", "method": method, "precision": precision,
            "xla": False, "batchnorm": "fused", "input": "batches", "variant": "",
            "backend": "tensorflow", "img_per_s": rate, "cpu_s_per_step": cpu, **extra}


def test_ratios_and_report_from_made_up_results():
    train = [_row("patchup_tf", "vanilla", "float32", 100.0, 3.0),
             _row("patchup_tf", "soft_patchup", "float32", 96.0, 3.09),
             _row("patchup_tf", "soft_patchup", "float32", 48.0, 3.0, variant="B=1"),
             _row("patchup_tf", "vanilla", "mixed_bfloat16", 50.0, 2.0),
             _row("patchup_tf", "soft_patchup", "mixed_bfloat16", 200.0, 1.0),
             _row("patchup_tf", "soft_patchup", "float32", 24.0, 1.0, backend="jax"),
             _row("torch_original", "soft_patchup", "float32", 60.0, 4.2, variant="A"),
             _row("torch_original", "soft_patchup", "float32", 40.0, 4.0),
             {**configs.make_config(backend="torch", xla=True), "skipped": "no XLA on torch"}]
    results = report.add_ratios({
        "machine": machine.machine_info(), "train": train, "workers": [],
        "settings": {"batch_size": 4, "steps": 1, "windows": 1, "warmup": 1, "timer": "fit"},
        "memory": [_row("patchup_tf", "soft_patchup", "float32", 0, 0, peak_rss_mb=1500.0),
                   _row("torch_original", "soft_patchup", "float32", 0, 0, peak_rss_mb=1200.0)],
        "pipeline": [{"pipeline": "digits", "name": "digits", "img_per_s": 6000.0,
                      "cpu_ms_per_batch": 1.0}]})
    v32, soft32, soft_b, _, soft16, soft_jax, theirs, _, skipped = results["train"]
    assert soft32["ratio_to_vanilla"] == pytest.approx(0.96)
    assert soft32["cpu_overhead_vs_vanilla"] == pytest.approx(0.03)
    assert soft16["ratio_to_vanilla"] == pytest.approx(4.0)  # bf16 vanilla is its baseline
    assert soft_b["ratio_to_vanilla"] is None and soft_b["x_variant_img_per_s"] == 0.5
    assert soft_jax["x_tf_img_per_s"] == pytest.approx(0.25) and skipped["x_tf_img_per_s"] is None
    # the original's fastest variant (img/s) and cheapest (CPU-s)
    assert soft32["x_torch_img_per_s"] == pytest.approx(96 / 60)
    assert soft32["torch_variant_img_per_s"] == "A" and soft32["torch_variant_cpu"] == ""
    assert soft32["x_torch_cpu"] == pytest.approx(4.0 / 3.09) and "x_torch_cpu" not in theirs
    assert results["memory"][0]["x_torch_peak_rss"] == pytest.approx(1.25)
    assert results["pipeline"][0]["ratio_to_fastest_model"] == pytest.approx(30.0)
    table = report.format_table(results)
    assert "SKIPPED no XLA on torch" in table and "x1.25 the original's" in table
    assert "| 0.960 | +4.2% |" in table and "x30" in table


def test_configs_per_backend():
    expanded = configs.expand(archs=["preactresnet18"], methods=["vanilla"], precisions=["float32"],
                              xla=["default", "on"], batchnorms=["fused"],
                              inputs=["batches", "trainer"], backends=configs.BACKENDS)
    runnable = [(c["backend"], c["xla"], c["input"]) for c in expanded
                if configs.skip_reason(c) is None]
    assert runnable == [("tensorflow", False, "batches"), ("jax", True, "batches"),
                        ("torch", False, "batches"), ("tensorflow", False, "trainer"),
                        ("tensorflow", True, "batches"), ("tensorflow", True, "trainer")]
    reasons = {configs.skip_reason(c) for c in expanded} - {None}
    assert len(reasons) == 3 and any("jit_compile=True" in r for r in reasons)
    assert configs.env_variants(["A=1, B=x=y"]) == [("A=1, B=x=y", {"A": "1", "B": "x=y"})]
    assert configs.env_variants([]) == [("", {})] and configs.config_label(expanded[1]) == (
        "patchup_tf/preactresnet18/vanilla/float32/xla=on/bn=fused/in=batches/jax")


# ------------------------------------------------------------ the CLI's checks
@pytest.mark.parametrize("argv, message", [
    (["--methods", "nosuch"], "argument `methods`"),
    (["--batchnorm", "bogus"], "argument `batchnorms`"),
    (["--worker_env", "NOEQUALS"], "KEY=VALUE"),
    (["--backend", "tf"], "Expected one of tensorflow, jax, torch. Received: backend='tf'"),
    (["--against-torch"], "git clone https://github.com/chandar-lab/PatchUp PATH"),
    (["--against-torch", "--torch_original", "/no/such"], "argument `torch_original`"),
    (["--steps", "0"], "invalid"), (["--batch_size", "x"], "invalid"), (["--xla", "x"], "invalid"),
])
def test_cli_rejects_bad_arguments_with_exit_2(capsys, argv, message):
    try:
        code = run.main(["--tiny", "--pipelines", "--out", "", *argv])
    except SystemExit as e:  # the parser's
        code = e.code
    assert code == 2 and message in capsys.readouterr().err


def test_cli_options_take_the_preset_where_not_given():
    options = run.options_from_args(run.build_parser().parse_args(["--tiny", "--steps", "4"]))
    assert options["steps"] == 4 and options["windows"] == configs.TINY["windows"]
    assert options["methods"] == configs.TINY["methods"] and set(options) <= set(run.DEFAULTS)
    options = run.options_from_args(run.build_parser().parse_args(["--pipelines"]))
    assert options["pipelines"] == () and "batch_size" not in options  # DEFAULTS apply later
    with pytest.raises(TypeError, match="nosuch"):
        run.run_benchmark(nosuch=1)


def test_main_py_flags_carry_the_paper_options(checkout, monkeypatch):
    soft = original.main_args("soft_patchup", 100)
    assert soft[:4] == ["--train", "patchup", "--patchup_type", "soft"] and "--alpha" not in soft
    assert soft[soft.index("--gamma") + 1] == "0.75" and soft[soft.index("--k") + 1] == "2"
    assert original.main_args("mixup")[-2:] == ["--alpha", "1"]
    assert original.check_checkout(str(checkout)) is None
    assert "patchup.py" in original.check_checkout(str(checkout / "models"))
    monkeypatch.setattr(original.importlib.util, "find_spec", lambda name: None)
    assert "pip install torch" in original.torch_status()[1]


def test_nothing_of_the_original_is_kept_here():
    for path in glob.glob(os.path.join(ROOT, "benchmarks", "*.py")):
        with open(path) as f:
            assert "class PatchUp(nn.Module)" not in f.read()


def test_gpu_preset_runs_without_tensorflow(tmp_path):
    """`python -m benchmarks.gpu_bench` starts and reports without TensorFlow or Keras."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules['tensorflow'] = None  # any import of it fails
        from benchmarks import gpu_bench
        assert gpu_bench.main(['--out', {str(tmp_path)!r}, '--impls', 'torch']) == 0
        assert sys.modules['tensorflow'] is None and 'keras' not in sys.modules
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_results.json").read_text())
    assert results["train"] == [] and results["settings"]["budget"] > 0
    assert results["settings"]["against_torch"] is False  # no checkout: no original
    assert "mode=one at a time" in (tmp_path / "gpu_results.md").read_text()
