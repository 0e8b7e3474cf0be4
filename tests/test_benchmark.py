"""The speed benchmark (`python -m benchmarks`): a `--tiny` run and its JSON,
each Keras backend in its own worker, the worker protocol (fake workers, and
a small torch model), the PyTorch original's glue against a fake checkout,
ratios and the table, the CLI's checks, and the GPU script without
TensorFlow."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from benchmarks import configs, machine, ratios, report, run
from benchmarks import torch_original as original
from benchmarks.interleave import bench_workers, run_isolated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def run_cli(out, *args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Runs the CI configuration once: `--tiny` (vanilla + soft_patchup, batch 8)."""
    results, stdout, _ = run_cli(tmp_path_factory.mktemp("bench") / "tiny.json")
    return results, stdout


def test_tiny_machine_and_settings(tiny):
    results, _ = tiny
    m = results["machine"]
    for key in ("date", "cpu_model", "cores", "versions", "gpus", "env"):
        assert key in m
    assert m["cores"] >= 1 and m["versions"]["tensorflow"] and m["versions"]["keras"]
    assert results["tf"]["tensorflow"] == m["versions"]["tensorflow"]
    assert results["settings"]["tiny"] is True
    assert results["settings"]["batch_size"] == configs.TINY["batch_size"]
    assert results["settings"]["mode"] == "in-process"


def test_tiny_train_rows(tiny):
    results, _ = tiny
    rows = results["train"]
    assert [r["method"] for r in rows] == list(configs.TINY["methods"])
    for r in rows:
        assert "error" not in r, r
        assert r["img_per_s"] > 0 and r["step_ms"] > 0 and r["cpu_s_per_step"] > 0
        assert len(r["img_per_s_windows"]) == configs.TINY["windows"]
        assert all(v > 0 for v in r["img_per_s_windows"])
        assert r["step_ms"] == pytest.approx(1000.0 * r["batch_size"] / r["img_per_s"])
        assert r["precision"] == "float32" and r["xla"] is False
        assert r["batchnorm"] == "fused" and r["input"] == "batches" and r["impl"] == "patchup_tf"
        assert r["logits_dtype"] == "float32"
        assert r["ratio_to_vanilla"] > 0
        assert r["retraces"] == 0, "train_step retraced after warm-up"
        assert r["tf_function_retraces"] == 0
        assert r["tf_function_traces"] >= 1
        assert r["peak_rss_mb"] > 0
    assert rows[0]["ratio_to_vanilla"] == pytest.approx(1.0)
    # Ratios only: no grading against targets in the results.
    assert not any(k.startswith("meets_") or "target" in k for r in rows for k in r)


def test_tiny_pipeline_rows_use_the_trainer_stream(tiny):
    results, _ = tiny
    assert [p["pipeline"] for p in results["pipeline"]] == ["digits", "synthetic"]
    for p in results["pipeline"]:
        assert "error" not in p, p
        assert "train_epochs" in p["name"]
        assert p["img_per_s"] > 0 and p["ratio_to_fastest_model"] > 0
        assert p["cpu_ms_per_batch"] >= 0
    assert results["fastest_train_config"]["img_per_s"] > 0


def test_tiny_prints_table(tiny):
    _, stdout = tiny
    assert "x van" in stdout and "soft_patchup" in stdout and "img/s" in stdout


def test_workers_batchnorms_trainer_input_and_mix_ops(tmp_path):
    """`--workers` moves the configs to a worker; both BatchNorm kinds; the
    trainer's stream as input; the mixing ops."""
    args = ["--methods", "soft_patchup", "--batchnorm", "fused", "keras", "--input", "trainer",
            "--workers", "--mix_ops", "--pipelines"]
    results, stdout, _ = run_cli(tmp_path / "w.json", *args)
    assert results["settings"]["mode"] == "workers"
    rows = results["train"]
    assert [(r["batchnorm"], r["input"]) for r in rows] == [("fused", "trainer"),
                                                            ("keras", "trainer")]
    for r in rows:
        assert "error" not in r, r
        assert r["img_per_s"] > 0 and r["cpu_s_per_step"] > 0 and r["retraces"] == 0
        assert r["input_name"] == "train_epochs"
        assert len(r["img_per_s_windows"]) == configs.TINY["windows"]
        assert r["process_peak_rss_mb"] > 0
    (worker,) = results["workers"]
    assert worker["name"] == "patchup_tf" and worker["tensorflow"]
    modes = {(r["mode"], r["position"], r["xla"]) for r in results["mix_ops"]}
    assert modes == {(m, p, x) for m in ("identity", "soft", "hard") for p in (1, 2, 3, 4)
                     for x in (False, True)}
    assert all("error" not in r and r["ms_per_call"] > 0 for r in results["mix_ops"])
    assert "PatchUp's own ops" in stdout


def test_each_keras_backend_in_its_own_worker(tmp_path):
    """One real step per backend: TensorFlow, JAX and PyTorch side by side."""
    results, stdout, _ = run_cli(tmp_path / "b.json", "--backend", "tensorflow", "jax", "torch",
                                 "--methods", "vanilla", "--windows", "1", "--pipelines")
    rows = {r["backend"]: r for r in results["train"]}
    assert sorted(rows) == ["jax", "tensorflow", "torch"] and len(results["train"]) == 3
    for backend, r in rows.items():
        assert r["img_per_s"] > 0 and not r.get("error"), r
        assert r["tensorflow_loaded"] == (backend == "tensorflow")
        assert r["x_tf_img_per_s"] == pytest.approx(
            r["img_per_s"] / rows["tensorflow"]["img_per_s"])
    assert rows["jax"]["timer"] == rows["torch"]["timer"] == "fit"
    assert [w["backend"] for w in results["workers"]] == ["tensorflow", "jax", "torch"]
    assert {w["env"]["KERAS_BACKEND"] for w in results["workers"]} == set(rows)
    assert "x tf" in stdout and " jax " in stdout and " torch " in stdout


def test_isolate_with_environment_variants(tmp_path):
    args = ["--methods", "vanilla", "--isolate", "--pipelines",
            "--worker_env", "TF_ENABLE_ONEDNN_OPTS=0", "TF_ENABLE_ONEDNN_OPTS=1"]
    results, _, _ = run_cli(tmp_path / "i.json", *args)
    rows = results["train"]
    assert [r["variant"] for r in rows] == ["TF_ENABLE_ONEDNN_OPTS=0", "TF_ENABLE_ONEDNN_OPTS=1"]
    for r in rows:
        assert "error" not in r, r
        assert r["peak_rss_mb"] > 100 and "subprocess" in r["rss_scope"]
        # Each variant is its own vanilla baseline.
        assert r["ratio_to_vanilla"] == pytest.approx(1.0)


def test_environment_variants():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        configs.parse_env("TF_ENABLE_ONEDNN_OPTS")
    assert configs.parse_env("A=1, B=x=y") == {"A": "1", "B": "x=y"}
    assert configs.env_variants([]) == [("", {})]


# ------------------------------------------------------------- the CLI's checks
@pytest.mark.parametrize("argv, message", [
    (["--methods", "nosuch"], "argument `methods`"),
    (["--batchnorm", "bogus"], "argument `batchnorms`"),
    (["--worker_env", "NOEQUALS"], "KEY=VALUE"),
    (["--backend", "tensorflow", "tf"], "Invalid value received for argument `backend`. "
                                        "Expected one of tensorflow, jax, torch. "
                                        "Received: backend='tf'"),
    (["--against-torch"], "--torch_original PATH"),
    (["--against-torch", "--torch_original", "/no/such/checkout"], "argument `torch_original`"),
])
def test_cli_rejects_bad_arguments_with_exit_2(capsys, argv, message):
    assert run.main(["--tiny", "--pipelines", "--out", "", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    if "--torch_original PATH" in message:
        assert "git clone https://github.com/chandar-lab/PatchUp PATH" in err


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--windows", "-1"], ["--batch_size", "x"],
                                  ["--precisions", "float64"], ["--input", "disk"]])
def test_cli_parser_rejects_bad_values(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_cli_options_take_the_preset_where_not_given():
    args = run.build_parser().parse_args(["--tiny", "--steps", "4"])
    options = run.options_from_args(args)
    assert options["steps"] == 4 and options["windows"] == configs.TINY["windows"]
    assert options["methods"] == configs.TINY["methods"] and set(options) <= set(run.DEFAULTS)
    full = run.options_from_args(run.build_parser().parse_args([]))
    assert full["batch_size"] == configs.FULL["batch_size"]
    with pytest.raises(TypeError, match="nosuch"):
        run.run_benchmark(nosuch=1)


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
            wall = job["batch_size"] / rate
            out.write(json.dumps({"img_per_s": rate, "wall_s": wall, "cpu_s": 2.0 * wall,
                                  "peak_rss_mb": 10}) + "\\n")
        else:
            results = [{**c, "peak_rss_mb": 10} for c in job["configs"]]
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
    return [configs.make_config("preactresnet18", m, "float32", False, impl=impl)
            for m in methods]


def test_workers_interleave_windows_and_collect_rows(fake):
    command, log = fake
    ours = _configs("patchup_tf", "vanilla", "soft_patchup")
    theirs = _configs("torch_original", "soft_patchup")
    rows, info = bench_workers(
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
    assert rows[2]["cpu_s_per_step"] == pytest.approx(2.0 * 4 / 50)
    assert rows[2]["cpu_util_windows"] == [2.0] * 3
    assert all(r["process_peak_rss_mb"] > 0 for r in rows)
    assert info[0]["env"] == {"X": "1"} and info[0]["fake"] is True


def test_a_failing_worker_does_not_stop_the_others(fake):
    command, _ = fake
    rows, info = bench_workers(
        [(command("crash"), {}, _configs("torch_original", "vanilla"), "crashes"),
         (command("7"), {}, _configs("patchup_tf", "bad", "vanilla"), "ok"),
         (command("hang"), {}, _configs("patchup_tf", "vanilla"), "hangs")],
        batch_size=4, steps=1, warmup=1, windows=2, start_timeout=5, log=lambda m: None)
    assert "cannot start" in rows[0]["error"]
    assert "bad method" in rows[1]["error"]
    assert rows[2]["img_per_s"] == pytest.approx(7.0) and "error" not in rows[2]
    assert "no answer within 5 s" in rows[3]["error"]
    assert [bool(i.get("error")) for i in info] == [True, False, True]


def test_run_isolated_reports_the_childs_peak(fake):
    command, _ = fake
    row = run_isolated(_configs("torch_original", "soft_patchup")[0], command("3"),
                       batch_size=4, steps=1, warmup=1, windows=1, log=lambda m: None)
    assert row["img_per_s"] == pytest.approx(3.0)
    assert row["peak_rss_mb"] > 0 and "wait4" in row["rss_scope"]


# --------------------------------------- the protocol, with a small torch model
TORCH_WORKER = textwrap.dedent('''
    """A worker timing a small torch model's SGD steps with the shared protocol."""
    import sys

    import torch

    from benchmarks.windows import Timed
    from benchmarks.workers import serve
    from patchup_tf.app.steptimer import time_steps


    class Bench:
        def __init__(self, config, batch_size):
            if config["method"] == "bad":
                raise ValueError("no such method")
            torch.manual_seed(0)
            self.config, self.batch_size = dict(config), batch_size
            self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
            self.x = torch.randn(batch_size, 3, 2, 2)
            self.y = torch.randint(0, 3, (batch_size,))
            self.losses, self.build_s, self.warmup_s = [], 0.0, 0.0

        def step(self):
            self.optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
            loss.backward()
            self.optimizer.step()
            self.losses.append(float(loss))

        def time(self, steps):
            return time_steps(self.step, steps)

        def result(self):
            return {**self.config, "losses": self.losses}

        def close(self):
            self.model = None


    def make(config, job):
        try:
            return Timed(Bench(config, job["batch_size"])), None
        except ValueError as e:
            return None, f"ValueError: {e}"


    sys.exit(serve(make, lambda job: {"torch": torch.__version__}))
''')


def test_worker_protocol_with_a_small_torch_model(tmp_path):
    torch = pytest.importorskip("torch", reason="the worker trains a torch model")
    script = tmp_path / "torch_worker.py"
    script.write_text(TORCH_WORKER)
    command = [sys.executable, str(script)]
    rows, info = bench_workers([(command, {}, _configs("torch_original", "vanilla", "bad"),
                                 "torch")], batch_size=6, steps=4, warmup=1, windows=3,
                               log=lambda m: None)
    good, bad = rows
    assert "no such method" in bad["error"]
    assert "error" not in good, good
    assert len(good["img_per_s_windows"]) == 3 and good["img_per_s"] > 0
    assert good["cpu_s_per_step"] >= 0 and good["peak_rss_mb"] > 0
    losses = good["losses"]
    assert len(losses) == 12  # 3 windows x 4 steps, all timed steps ran
    assert losses[-1] < losses[0]  # a fixed batch: SGD lowers its loss
    assert info[0]["torch"] == torch.__version__ and "env" in info[0]


# ------------------------------------------ the PyTorch original, a fake checkout
FAKE_MAIN = textwrap.dedent('''
    """A stand-in for the original's main.py: its names, its module-level
    argument parsing, an `np.int` call and a top-k `.view(-1)` that current
    NumPy / PyTorch refuse, as the original has."""
    import argparse, json, os

    import numpy as np
    import torch

    import models
    from modules.patchup import PatchUpMode

    device = torch.device("cpu")
    parser = argparse.ArgumentParser()
    for flag, kind, default in (("--train", str, "vanilla"), ("--arch", str, "preactresnet18"),
                                ("--patchup_type", str, "soft"), ("--gamma", float, 0.9),
                                ("--patchup_prob", float, 0.7), ("--alpha", float, 0.0),
                                ("--k", int, 2), ("--cutmix_prob", float, 0.5),
                                ("--patchup_block", int, 7), ("--drop_block", int, 7),
                                ("--keep_prob", float, 0.9), ("--batch_size", int, 100),
                                ("--learning_rate", float, 0.1), ("--momentum", float, 0.9),
                                ("--decay", float, 0.0001)):
        parser.add_argument(flag, type=kind, default=default)
    parser.add_argument("--loss_params", type=int, nargs="+", default=[1, 1])
    parser.add_argument("--dropout", action="store_true", default=False)
    args = parser.parse_args()
    args.patchup_type = PatchUpMode.SOFT if args.patchup_type == "soft" else PatchUpMode.HARD


    def accuracy(output, target, topk=(1,)):
        _, pred = output.topk(max(topk), 1, True, True)
        correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
        return [correct[:k].view(-1).float().sum(0) * (100.0 / target.size(0)) for k in topk]


    def train(train_loader, model, optimizer, epoch, args, log):
        model.train()
        for i, (input, target) in enumerate(train_loader):
            output = model(input)
            loss = torch.nn.functional.cross_entropy(output, target)
            prec1, prec5 = accuracy(output, target, topk=(1, 5))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            np.int(3.0)
        with open(os.environ["FAKE_LOG"], "a") as f:
            f.write(json.dumps({"train": args.train, "steps": len(train_loader),
                                "type": args.patchup_type.value, "gamma": args.gamma,
                                "prob": args.patchup_prob, "alpha": args.alpha,
                                "block": args.patchup_block, "loss_params": args.loss_params,
                                "classes": args.num_classes,
                                "prec1": float(prec1), "prec5": float(prec5)}) + "\\n")
        return 0.0, 0.0, float(loss)
''')
FAKE_MODELS = textwrap.dedent('''
    from .preresnet import preactresnet18
''')
FAKE_PRERESNET = textwrap.dedent('''
    import torch


    def preactresnet18(num_classes=10, dropout=False, per_img_std=False, stride=1, drop_block=7,
                       keep_prob=.9, gamma=.9, patchup_block=7):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, num_classes))
''')
FAKE_PATCHUP = textwrap.dedent('''
    from enum import Enum


    class PatchUpMode(Enum):
        SOFT = "soft"
        HARD = "hard"
''')


@pytest.fixture
def fake_checkout(tmp_path):
    root = tmp_path / "PatchUp"
    for path, text in (("main.py", FAKE_MAIN), ("models/__init__.py", FAKE_MODELS),
                       ("models/preresnet.py", FAKE_PRERESNET),
                       ("modules/__init__.py", ""), ("modules/patchup.py", FAKE_PATCHUP)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def test_the_original_runs_from_a_checkout(fake_checkout, tmp_path):
    """Each config loads the checkout's main.py with its own flags; its `train`
    runs `steps` steps per window; `np.int` and the top-k `view` are patched."""
    pytest.importorskip("torch", reason="the original's worker needs torch")
    log = tmp_path / "calls.jsonl"
    jobs = original.job_configs(["preactresnet18"], ["soft_patchup", "mixup", "cutout"], 4)
    assert [c["method"] for c in jobs] == ["soft_patchup", "mixup"]  # it has no cutout here
    rows, info = bench_workers([(original.command(str(fake_checkout)), {"FAKE_LOG": str(log)},
                                 jobs, "torch_original")],
                               batch_size=4, steps=3, warmup=2, windows=2, log=lambda m: None)
    for r in rows:
        assert "error" not in r, r
        assert r["impl"] == "torch_original" and r["img_per_s"] > 0 and r["device"] == "cpu"
        assert len(r["img_per_s_windows"]) == 2
    assert info[0]["checkout"] == str(fake_checkout) and info[0]["torch"]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    # per config: the warm-up call (2 steps), then 2 windows of 3 steps
    soft = [c for c in calls if c["train"] == "patchup"]
    mixup = [c for c in calls if c["train"] == "mixup"]
    assert [c["steps"] for c in soft] == [2, 3, 3] and [c["steps"] for c in mixup] == [2, 3, 3]
    assert soft[0]["type"] == "soft" and soft[0]["gamma"] == 0.75 and soft[0]["prob"] == 1.0
    assert soft[0]["block"] == 7 and soft[0]["loss_params"] == [1, 1] and soft[0]["alpha"] == 0.0
    assert mixup[0]["alpha"] == 1.0 and soft[0]["classes"] == 10
    assert all(0.0 <= c["prec1"] <= c["prec5"] <= 100.0 for c in calls)


def test_a_broken_checkout_is_reported_per_config(tmp_path):
    pytest.importorskip("torch", reason="the original's worker needs torch")
    root = tmp_path / "broken"
    (root / "models").mkdir(parents=True)
    (root / "modules").mkdir()
    (root / "main.py").write_text("import no_such_requirement_of_the_original\n")
    rows, _ = bench_workers([(original.command(str(root)), {},
                              original.job_configs(["preactresnet18"], ["vanilla"], 4), "t")],
                            batch_size=4, steps=1, warmup=1, windows=1, log=lambda m: None)
    assert "no_such_requirement_of_the_original" in rows[0]["error"]
    assert "pip install" in rows[0]["error"]


def test_checkout_checks(fake_checkout, tmp_path):
    assert original.check_checkout(str(fake_checkout)) is None
    assert original.check_checkout(None) == original.MISSING_PATH
    (fake_checkout / "modules" / "patchup.py").unlink()
    problem = original.check_checkout(str(fake_checkout))
    assert "argument `torch_original`" in problem and "patchup.py" in problem


def test_main_py_flags_carry_the_paper_options():
    soft = original.main_args("soft_patchup", 100)
    assert soft[:4] == ["--train", "patchup", "--patchup_type", "soft"]

    def value(flag):
        return soft[soft.index(flag) + 1]

    assert value("--gamma") == "0.75" and value("--patchup_prob") == "1" and value("--k") == "2"
    assert value("--patchup_block") == "7" and value("--batch_size") == "100"
    assert soft[soft.index("--loss_params") + 1:soft.index("--loss_params") + 3] == ["1", "1"]
    assert "--alpha" not in soft  # the original's PatchUp draws its own lam
    hard = original.main_args("hard_patchup")
    assert hard[hard.index("--patchup_prob") + 1] == "0.7"
    assert original.main_args("mixup")[-2:] == ["--alpha", "1"]


def test_torch_status_without_torch(monkeypatch):
    monkeypatch.setattr(original.importlib.util, "find_spec", lambda name: None)
    ok, detail = original.torch_status()
    assert not ok and "pip install torch" in detail
    ok, detail = original.torch_status(os.path.join(ROOT, "no", "such", "python"))
    assert not ok


def test_nothing_of_the_original_is_kept_here():
    for folder, _, files in os.walk(os.path.join(ROOT, "benchmarks")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    text = f.read()
                assert "class PatchUp(nn.Module)" not in text and "Copyright (c) 2020" not in text


# ------------------------------------------------------------ ratios, table
def _row(impl, method, precision, rate, cpu, xla=False):
    return {"impl": impl, "arch": "preactresnet18", "method": method, "precision": precision,
            "xla": xla, "batchnorm": "fused" if impl == "patchup_tf" else None,
            "input": "batches", "variant": "", "img_per_s": rate, "step_ms": 4000 / rate,
            "img_per_s_windows": [rate], "cpu_util_windows": [2.0], "cpu_s_per_step": cpu,
            "retraces": 0 if impl == "patchup_tf" else None, "peak_rss_mb": 1.0}


def fake_results():
    return {
        "machine": {"date": "d", "cpu_model": "cpu", "cpu_flags": [], "cores": 2, "gpus": None,
                    "python": "3", "versions": {"tensorflow": "2", "keras": "3"}, "env": {}},
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


def test_ratios_and_table_from_fake_results(tmp_path):
    results = ratios.add_ratios(fake_results())
    v32, soft32, hard32, v16, soft16, tv, tsoft, thard = results["train"][:8]
    assert soft32["ratio_to_vanilla"] == pytest.approx(0.96)
    assert soft32["overhead_vs_vanilla"] == pytest.approx(1 / 0.96 - 1)
    assert soft32["cpu_overhead_vs_vanilla"] == pytest.approx(0.03)
    assert hard32["overhead_vs_vanilla"] == pytest.approx(1 / 0.9 - 1)
    assert soft16["ratio_to_vanilla"] == pytest.approx(4.0)  # bf16 vanilla is its baseline
    assert tsoft["ratio_to_vanilla"] == pytest.approx(60 / 70)  # the original's own baseline
    # against the original (same method)
    assert soft32["x_torch_img_per_s"] == pytest.approx(96 / 60)
    assert soft32["x_torch_cpu"] == pytest.approx(4.2 / 3.09)
    assert hard32["x_torch_img_per_s"] == pytest.approx(90 / 80)
    assert soft16["x_torch_img_per_s"] == pytest.approx(200 / 60)
    assert v32["x_torch_img_per_s"] == pytest.approx(100 / 70)
    assert "x_torch_img_per_s" not in tsoft
    assert results["memory"][0]["x_torch_peak_rss"] == pytest.approx(1.25)
    # the fastest of ours (not the original's) sets the pipeline ratio
    assert results["fastest_train_config"]["img_per_s"] == 200.0
    assert results["pipeline"][0]["ratio_to_fastest_model"] == pytest.approx(30.0)
    table = report.format_table(results)
    assert "ERROR" in table and "x30" in table and "torch_original" in table
    assert "x1.25 the original's" in table and " 1.60 " in table
    for grade in (" ok", " NO", "target", "BELOW"):
        assert grade not in table
    report.write_results(str(tmp_path / "r.json"), results)
    assert json.loads((tmp_path / "r.json").read_text())["train"][1]["ratio_to_vanilla"] == 0.96


def test_backend_ratios_skips_and_table():
    def row(method, backend, rate):
        return {**_row("patchup_tf", method, "float32", rate, 1.0), "backend": backend}

    skipped = {**configs.make_config(method="soft_patchup", backend="torch"),
               "skipped": "no XLA on torch"}
    results = fake_results()
    results["train"] = [row("vanilla", "tensorflow", 100.0), row("vanilla", "jax", 50.0),
                        row("vanilla", "torch", 25.0), row("soft_patchup", "tensorflow", 80.0),
                        row("soft_patchup", "jax", 40.0), skipped]
    tf_v, jax_v, torch_v, tf_s, jax_s, _ = ratios.add_ratios(results)["train"]
    assert [r["x_tf_img_per_s"] for r in (tf_v, jax_v, torch_v, tf_s, jax_s, skipped)] \
        == [1.0, 0.5, 0.25, 1.0, 0.5, None]
    assert jax_s["ratio_to_vanilla"] == pytest.approx(0.8)  # JAX's own vanilla
    table = report.format_table(results)
    assert "SKIPPED no XLA on torch" in table and " 0.25 " in table
    assert "x_tf_img_per_s" not in ratios.add_ratios(fake_results())["train"][0]


def test_what_a_backend_cannot_run_is_skipped():
    expanded = configs.expand(archs=["preactresnet18"], methods=["vanilla"],
                              precisions=["float32"], xla=["off", "on"], batchnorms=["fused"],
                              inputs=["batches", "trainer"], backends=["tensorflow", "torch"])
    reasons = {configs.config_label(c): configs.skip_reason(c) for c in expanded}
    assert [k for k, v in reasons.items() if v is None] == [
        "patchup_tf/preactresnet18/vanilla/float32/xla=off/bn=fused/in=batches",
        "patchup_tf/preactresnet18/vanilla/float32/xla=off/bn=fused/in=batches/torch",
        "patchup_tf/preactresnet18/vanilla/float32/xla=off/bn=fused/in=trainer",
        "patchup_tf/preactresnet18/vanilla/float32/xla=on/bn=fused/in=batches",
        "patchup_tf/preactresnet18/vanilla/float32/xla=on/bn=fused/in=trainer"]
    assert "jit_compile=True" in reasons[
        "patchup_tf/preactresnet18/vanilla/float32/xla=on/bn=fused/in=batches/torch"]
    assert "tf.data" in reasons[
        "patchup_tf/preactresnet18/vanilla/float32/xla=off/bn=fused/in=trainer/torch"]


def test_each_backend_is_timed_in_its_default_mode():
    """`--xla default`: TensorFlow's tf.function, JAX compiled, PyTorch eager;
    "on" adds XLA where it differs (asked twice, timed once)."""
    expanded = configs.expand(archs=["preactresnet18"], methods=["vanilla"],
                              precisions=["float32"], xla=["default", "on"],
                              batchnorms=["fused"], inputs=["batches"],
                              backends=["tensorflow", "jax", "torch"])
    assert [(c["backend"], c["xla"]) for c in expanded] == [
        ("tensorflow", False), ("jax", True), ("torch", False), ("tensorflow", True),
        ("torch", True)]
    assert configs.skip_reason(expanded[-1]) is not None  # PyTorch trains eagerly


def test_config_tuples_and_labels():
    c = configs.as_config(("wrn28_2", "mixup", "mixed_bfloat16", True))
    assert c["arch"] == "wrn28_2" and c["xla"] is True and c["batchnorm"] == "fused"
    assert "bn=fused" in configs.config_label(c)
    assert [x["method"] for x in configs.expand(
        archs=["preactresnet18"], methods=["vanilla", "mixup"], precisions=["float32"],
        xla=["off", "on"], batchnorms=["fused"], inputs=["batches"], xla_methods=["mixup"])] \
        == ["vanilla", "mixup", "mixup"]


def test_machine_records_isa_flags_and_onednn(monkeypatch):
    """The machine facts name the CPU's ISA flags (of those shown) and the oneDNN setting."""
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    m = machine.machine_info()
    assert m["onednn_opts"] == "1" and m["env"]["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert set(m["cpu_flags"]) <= set(machine.CPU_FLAGS_SHOWN)
    assert set(m["cpu_flags"]) == set(machine.CPU_FLAGS_SHOWN) & set(machine.cpu_flags())
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    assert machine.machine_info()["onednn_opts"] == "unset"


def test_peak_rss_helpers():
    assert machine.peak_rss_mb() > 0
    machine.reset_peak_rss()  # best effort; must not raise
    assert machine.peak_rss_mb() > 0


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
        rate = 100.0 if config["method"] == "vanilla" else 90.0
        if cmd["cmd"] == "build":
            if config["method"] == "cutout":  # stands for a config that hangs
                time.sleep(60)
            ok = config["method"] != "dropblock"
            out.write(json.dumps({"ok": ok, "build_s": 0.1, "warmup_s": 0.1,
                                  "error": "ValueError: no such kernel"}) + "\\n")
        elif cmd["cmd"] == "window":
            out.write(json.dumps({"img_per_s": rate, "wall_s": 0.01, "cpu_s": 0.01,
                                  "peak_rss_mb": 1}) + "\\n")
        elif cmd["cmd"] == "result":
            out.write(json.dumps({"result": {**config, "img_per_s": rate,
                                             "gpu_peak_mb": 5.0}}) + "\\n")
        else:
            out.write(json.dumps({"results": [], "process_peak_rss_mb": 1}) + "\\n")
            break
''')


@pytest.fixture
def gpu(tmp_path, monkeypatch):
    from benchmarks import gpu_bench, tf_worker

    script = tmp_path / "fake_lazy_worker.py"
    script.write_text(FAKE_LAZY_WORKER)
    monkeypatch.setattr(tf_worker, "command", lambda python=None: [sys.executable, str(script)])
    return gpu_bench


def test_gpu_script_runs_without_tensorflow(tmp_path):
    """On a GPU machine with torch but no TensorFlow, `python -m benchmarks.gpu_bench`
    still starts and reports: it imports neither TensorFlow nor Keras."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules['tensorflow'] = None  # any import of it fails
        from benchmarks import gpu_bench
        assert gpu_bench.main(['--out', {str(tmp_path)!r}, '--impls', 'torch',
                               '--budget', '5']) == 0
        assert sys.modules['tensorflow'] is None and 'keras' not in sys.modules
        print('ok')
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=ENV)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
    log = (tmp_path / "gpu_log.txt").read_text()
    assert "torch: no (--against-torch needs --torch_original PATH" in log
    assert json.loads((tmp_path / "gpu_results.json").read_text())["rows"] == []


def test_gpu_script_times_out_one_config_and_goes_on(gpu):
    import argparse
    import time

    args = argparse.Namespace(batch_size=4, warmup=1, steps=1, windows=2, config_timeout=4,
                              min_config_s=0.5, start_timeout=30)
    group = ("tf", "preactresnet18", "float32", False,
             ("vanilla", "cutout", "dropblock", "soft_patchup"))
    rows = gpu.run_group(group, args=args, end=time.monotonic() + 120, log=lambda m: None)
    assert [r["method"] for r in rows] == ["vanilla", "cutout", "dropblock", "soft_patchup"]
    assert rows[0]["img_per_s"] == 100.0 and rows[0]["gpu_peak_mb"] == 5.0
    assert "no answer within" in rows[1]["error"]  # timed out; its worker was replaced
    assert "no such kernel" in rows[2]["error"]
    assert rows[3]["img_per_s"] == 90.0 and "error" not in rows[3]
    # Out of budget: skipped, not started.
    rows = gpu.run_group(group, args=args, end=time.monotonic() + 0.2, log=lambda m: None)
    assert [r.get("skipped") for r in rows] == ["time budget"] * 4


def test_gpu_script_writes_its_table(gpu, tmp_path):
    out = tmp_path / "out"
    assert gpu.main(["--out", str(out), "--archs", "preactresnet18", "--methods", "vanilla",
                     "soft_patchup", "--steps", "1", "--windows", "1", "--budget", "100",
                     "--impls", "tf"]) == 0
    rows = json.loads((out / "gpu_results.json").read_text())["rows"]
    # float32, bf16, bf16 + XLA, float32 + XLA; no torch here
    assert {(r["precision"], r["xla"]) for r in rows} == {
        ("float32", False), ("mixed_bfloat16", False), ("mixed_bfloat16", True),
        ("float32", True)}
    soft = [r for r in rows if r["method"] == "soft_patchup"]
    assert all(r["ratio_to_vanilla"] == pytest.approx(0.9) for r in soft)
    table = (out / "gpu_results.md").read_text()
    assert "| preactresnet18 | patchup_tf | soft_patchup | mixed_bfloat16 | on | 90 |" in table
    assert (out / "gpu_log.txt").exists()
