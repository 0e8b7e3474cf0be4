"""A stand-in for scripts/train.py in the sweep's fast tests.

It imports nothing from patchup_tf (whose import loads TensorFlow): the test
writes, for every command of the grid, its experiment folder and its
flags.json into the JSON file named by FAKE_RUNS (see `test_sweep.py`). The fake
writes what a finished run leaves behind (flags.json, report.json,
saved_model/) and appends its environment to `launches.jsonl` in the folder.
`--add_name fail` exits 3 before finishing; `--add_name wait` waits until
FAKE_BARRIER_COUNT runs have reached the folder FAKE_BARRIER (a check that
they run at the same time; exit 4 if they never do).
"""

import json
import os
import sys
import time

ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
            "OMP_NUM_THREADS", "PYTHONUNBUFFERED")


def main(argv):
    with open(os.environ["FAKE_RUNS"]) as f:
        run = json.load(f)[json.dumps(argv)]
    folder, config = run["folder"], run["config"]
    flags = config["flags"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "launches.jsonl"), "a") as f:
        f.write(json.dumps({k: os.environ.get(k) for k in ENV_KEYS}) + "\n")
    print(f"fake run {folder}", flush=True)
    with open(os.path.join(folder, "flags.json"), "w") as f:
        json.dump(config, f)
    if flags["add_name"] == "fail":
        print("fake failure", flush=True)
        return 3
    if flags["add_name"] == "wait":
        barrier = os.environ["FAKE_BARRIER"]
        os.makedirs(barrier, exist_ok=True)
        open(os.path.join(barrier, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(barrier)) < int(os.environ["FAKE_BARRIER_COUNT"]):
            if time.monotonic() > deadline:
                print("the other runs never started", flush=True)
                return 4
            time.sleep(0.05)
    report = {"test": {"error": 10.0 + flags["seed"], "top1": 90.0 - flags["seed"],
                       "top5": 99.0, "loss": 0.5},
              "best_epoch": 0, "experiment_dir": folder}
    if flags["fsgm_attack"]:
        report["fgsm"] = [{"eps": 0.0, "accuracy": 90.0, "loss": 0.5}]
    with open(os.path.join(folder, "report.json"), "w") as f:
        json.dump(report, f)
    os.makedirs(os.path.join(folder, "saved_model"), exist_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
