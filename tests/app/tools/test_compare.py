"""`scripts/compare.py` on hand-made experiment folders with known numbers."""

import csv
import json
import os
import statistics

from patchup_tf.app.cli import compare as compare_cli

from patchup_tf.app.experiment import config as flags_lib

BASE = ["--dataset", "cifar10", "--arch", "wrn28_2", "--epochs", "5"]


def make_run(root, argv, error=None, top5=99.0, best_epoch=4, fgsm=None, affine=None,
             epochs_completed=5, logged=5):
    """An experiment folder as the trainer leaves it (flags.json, log.json and,
    with `error`, report.json); returns the folder."""
    args = flags_lib.build_parser().parse_args(["--root_dir", str(root), *BASE, *argv])
    method = flags_lib.resolve_method(args)
    epochs, schedule, factors = flags_lib.resolve_schedule(args)
    folder = os.path.join(str(root), flags_lib.experiment_name(args, method, epochs))
    os.makedirs(folder)
    config = {"flags": vars(args), "method": method,
              "method_options": flags_lib.method_options(args, method), "epochs": epochs,
              "schedule": schedule, "step_factors": factors, "precision": "float32",
              "experiment_dir": folder, "argv": argv}
    _dump(os.path.join(folder, "flags.json"), config)
    _dump(os.path.join(folder, "log.json"), [{"epoch": e} for e in range(logged)])
    if error is not None:
        report = {"experiment_dir": folder, "best_epoch": best_epoch,
                  "epochs_completed": epochs_completed,
                  "valid": {"error": 50.0, "top1": 50.0, "top5": 90.0, "loss": 1.0},
                  "test": {"error": error, "top1": 100.0 - error, "top5": top5, "loss": 1.0}}
        if fgsm:
            report["fgsm"] = [{"eps": eps, "accuracy": acc, "loss": 1.0} for eps, acc in fgsm]
        if affine:
            report["affine"] = [{"name": name, "error": err, "top1": 100 - err}
                                for name, err in affine]
        _dump(os.path.join(folder, "report.json"), report)
    return folder


def _dump(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def _groups(doc):
    return {g["label"]: g for g in doc["groups"]}


def test_means_sds_and_the_folders_left_out(tmp_path, capsys):
    root = tmp_path / "runs"
    soft = [make_run(root, ["--method", "soft_patchup", "--seed", "0"], 10.0, top5=99.0,
                     best_epoch=4, fgsm=[(0.0, 90.0), (0.1, 70.0)]),
            make_run(root, ["--method", "soft_patchup", "--seed", "1"], 12.0, top5=98.0,
                     best_epoch=3, fgsm=[(0.0, 88.0), (0.1, 66.0)]),
            # the job id and the seed do not define the setting
            make_run(root, ["--train", "patchup", "--patchup_type", "soft", "--seed", "2",
                            "--job_id", "7"], 14.0, top5=97.0, best_epoch=2,
                     fgsm=[(0.0, 86.0), (0.1, 62.0)])]
    make_run(root, ["--method", "vanilla", "--seed", "0"], 20.0, top5=95.0)
    make_run(root, ["--method", "vanilla", "--seed", "1"], 21.0, top5=96.0)
    # an explicit paper setting is the same setting as an unset one
    make_run(root, ["--method", "mixup", "--seed", "0", "--alpha", "1.0"], 15.0)
    make_run(root, ["--method", "mixup", "--seed", "1"], 17.0)
    incomplete = make_run(root, ["--method", "hard_patchup"], logged=2)
    mismatched = make_run(root, ["--method", "cutmix"], 30.0, epochs_completed=3)
    unreadable = root / "unreadable"
    unreadable.mkdir()
    (unreadable / "flags.json").write_text("{not json")
    (unreadable / "report.json").write_text("{}")
    orphan = root / "nested" / "orphan"
    orphan.mkdir(parents=True)
    (orphan / "report.json").write_text(json.dumps({"test": {"error": 1.0}}))

    assert compare_cli.main([str(root)]) == 0
    out = capsys.readouterr().out
    with open(root / "comparison.json") as f:
        doc = json.load(f)
    assert doc["varying"] == []
    groups = doc["groups"]
    assert [g["label"] for g in groups] == ["vanilla", "mixup", "soft_patchup"]  # library order
    g = _groups(doc)
    m = g["soft_patchup"]["metrics"]
    assert m["test error"] == {"mean": 12.0, "sd": 2.0, "n": 3, "values": [10.0, 12.0, 14.0]}
    assert m["top-5 error"]["mean"] == 2.0 and m["top-5 error"]["sd"] == 1.0
    assert m["best epoch"]["mean"] == 3.0 and m["best epoch"]["sd"] == 1.0
    assert m["FGSM 0 error"] == {"mean": 12.0, "sd": 2.0, "n": 3, "values": [10.0, 12.0, 14.0]}
    assert m["FGSM 0.1 error"]["mean"] == 34.0 and m["FGSM 0.1 error"]["sd"] == 4.0
    assert sorted(r["folder"] for r in g["soft_patchup"]["runs"]) == sorted(soft)
    v = g["vanilla"]["metrics"]["test error"]
    assert v["mean"] == 20.5 and v["sd"] == statistics.stdev([20.0, 21.0]) and v["n"] == 2
    assert g["mixup"]["metrics"]["test error"]["mean"] == 16.0
    assert "FGSM 0 error" not in g["vanilla"]["metrics"]
    assert doc["incomplete"] == [{"folder": incomplete, "epochs_done": 2, "epochs": 5}]
    reasons = {p["folder"]: p["reason"] for p in doc["problems"]}
    assert set(reasons) == {mismatched, str(unreadable), str(orphan)}
    assert "3 epochs" in reasons[mismatched] and "unreadable" in reasons[str(unreadable)]
    assert reasons[str(orphan)] == "no flags.json"

    # The printed table and comparison.md
    for text in (out, (root / "comparison.md").read_text()):
        assert "| soft_patchup | 12.00 ± 2.00 (3) | 2.00 ± 1.00 (3) | 3.0 ± 1.0 (3) |" in text
        assert "| vanilla      | 20.50 ± 0.71 (2) |" in text
        assert "| soft_patchup | 12.00 ± 2.00 (3) | 34.00 ± 4.00 (3) |" in text  # FGSM
        assert "| vanilla      | -                | -                |" in text
        assert incomplete in text and mismatched in text and str(unreadable) in text
    with open(root / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["vanilla", "mixup", "soft_patchup"]
    assert float(rows[2]["test error mean"]) == 12.0 and float(rows[2]["test error sd"]) == 2.0
    assert rows[2]["test error n"] == "3" and rows[0]["FGSM 0.1 error n"] == "0"
    assert (root / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in os.listdir(root) if n.startswith(".tmp-")]

    # Written again (e.g. after more runs finished): replaced, still one entry each.
    assert compare_cli.main([str(root)]) == 0
    assert len(json.loads((root / "comparison.json").read_text())["groups"]) == 3


def test_rows_show_every_setting_that_varies(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root, ["--method", "vanilla"], 20.0)
    make_run(root, ["--method", "vanilla", "--arch", "preactresnet18"], 18.0)
    make_run(root, ["--method", "soft_patchup"], 10.0)
    make_run(root, ["--method", "soft_patchup", "--gamma", "0.5"], 11.0,
             affine=[("rotation_20", 40.0), ("zoom_0.6", 55.0)])
    make_run(root, ["--method", "hard_patchup"], 12.0)  # other gamma, other method: not a row key
    out_dir = tmp_path / "elsewhere"
    assert compare_cli.main([str(root), "--out", str(out_dir)]) == 0
    doc = json.loads((out_dir / "comparison.json").read_text())
    assert doc["varying"] == ["arch", "gamma"]
    assert doc["implied"] == ["schedule", "step_factors"]  # each arch's default
    assert "following from the columns shown: schedule, step_factors" in \
        (out_dir / "comparison.md").read_text()
    labels = [g["label"] for g in doc["groups"]]
    assert labels == ["vanilla arch=preactresnet18", "vanilla arch=wrn28_2",
                      "soft_patchup arch=wrn28_2 gamma=0.5",
                      "soft_patchup arch=wrn28_2 gamma=0.75",
                      "hard_patchup arch=wrn28_2 gamma=0.5"]
    assert doc["groups"][2]["metrics"]["rotation_20 error"]["mean"] == 40.0
    out = capsys.readouterr().out
    assert "| method       | arch           | gamma | test error %" in out
    assert "| vanilla      | preactresnet18 | -     | 18.00 (1)" in out
    assert "| soft_patchup | wrn28_2        | 0.5   | 40.00 (1)   | 55.00 (1)" in out
    assert not os.path.exists(root / "comparison.md") and os.path.exists(out_dir / "comparison.png")


def test_a_flag_that_differs_between_methods_is_shown(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root, ["--method", "vanilla", "--batch_size", "50"], 20.0)
    make_run(root, ["--method", "mixup"], 15.0)
    assert compare_cli.main([str(root)]) == 0
    doc = json.loads((root / "comparison.json").read_text())
    assert doc["varying"] == ["batch_size"] and doc["implied"] == []
    assert [g["label"] for g in doc["groups"]] == ["vanilla batch_size=50",
                                                   "mixup batch_size=100"]


def test_nothing_finished_and_bad_arguments(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root, ["--method", "vanilla"], logged=1)
    assert compare_cli.main([str(root)]) == 1
    out = capsys.readouterr().out
    assert "no finished experiment" in out and "Incomplete" in out
    assert json.loads((root / "comparison.json").read_text())["groups"] == []
    if compare_cli.main([str(tmp_path / "missing")]) != 2:
        raise AssertionError("a missing folder must exit 2")
