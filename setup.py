"""Installs patchup_tf: PatchUp and its baselines for TensorFlow 2 / Keras 3."""
from setuptools import find_packages, setup

setup(
    name="patchup_tf",
    version="0.1.0",
    description=(
        "PatchUp (Faramarzi et al., arXiv 2006.07794) and Mixup, Manifold Mixup, "
        "CutMix, Cutout, DropBlock for TensorFlow 2 / Keras 3"
    ),
    packages=find_packages(include=["patchup_tf", "patchup_tf.*"]),
    python_requires=">=3.9",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "tensorboard",
        "tensorflow-datasets",
        "numpy",
        "scipy",
        "scikit-learn",
        "matplotlib",
    ],
    extras_require={
        # jax and torch run tests/any_backend (tests/test_backends.py). torch is
        # pinned to the CPU build tested here: a bare `torch` from PyPI pulls a
        # multi-gigabyte CUDA build.
        "test": ["pytest", "hypothesis", "jax>=0.4.30", "torch==2.13.0"],
        "hub": ["keras-hub>=0.32"],
    },
    entry_points={
        "console_scripts": [
            "patchup-train = patchup_tf.cli.train:main",
            "patchup-evaluate = patchup_tf.cli.evaluate:main",
            "patchup-make-affine-sets = patchup_tf.cli.make_affine_sets:main",
            "patchup-visualize = patchup_tf.cli.visualize:main",
            "patchup-benchmark = patchup_tf.benchmark:main",
            "patchup-sweep = patchup_tf.sweep:main",
            "patchup-compare = patchup_tf.compare:main",
        ],
    },
)
