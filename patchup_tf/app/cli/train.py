"""Train a CNN with PatchUp or a baseline, with the PyTorch original's flags.

Every command line of the original README runs with `python main.py`
replaced by `patchup-train` (or `python scripts/train.py`), e.g. soft
PatchUp on CIFAR-10:

    patchup-train --dataset cifar10 --data_dir ./data/cifar10/ \
        --root_dir ./experiments/patchup/soft/ --labels_per_class 5000 \
        --valid_labels_per_class 500 --arch preactresnet18 --learning_rate 0.1 \
        --momentum 0.9 --decay 0.0001 --epochs 2000 --schedule 500 1000 1500 \
        --step_factors 0.1 0.1 0.1 --train patchup --alpha 2.0 --patchup_type soft \
        --patchup_block 7 --patchup_prob 1.0 --gamma 0.75 --job_id 0

Offline quick start (scikit-learn's digits, a few minutes on 2 CPU cores):

    patchup-train --dataset digits --method soft_patchup --epochs 5

Exit codes: see `patchup_tf.app.cli`.
"""

from patchup_tf.app.cli import program
from patchup_tf.app.experiment.config import RunConfig


@program
def main(argv):
    config = RunConfig.from_argv(argv)  # a bad flag is answered before TensorFlow loads
    from patchup_tf.app.cli.tf_logging import import_tensorflow

    import_tensorflow()
    from patchup_tf.app.experiment.run import run

    run(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
