"""Installs patchup_tf: PatchUp and its baselines for TensorFlow 2 / Keras 3."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    LONG_DESCRIPTION = f.read()

TRAIN = ["tensorflow>=2.16", "tensorflow-datasets", "tensorboard", "scipy", "scikit-learn",
         "matplotlib"]
JAX = ["jax>=0.4.30"]
TORCH = ["torch==2.13.0"]

setup(
    name="patchup_tf",
    version="0.1.0",
    description=(
        "PatchUp (Faramarzi et al., arXiv 2006.07794) and Mixup, Manifold Mixup, "
        "CutMix, Cutout, DropBlock for TensorFlow 2 / Keras 3"
    ),
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    url="https://arxiv.org/abs/2006.07794",
    project_urls={
        "Paper": "https://arxiv.org/abs/2006.07794",
        "PyTorch original": "https://github.com/chandar-lab/PatchUp",
    },
    # An SPDX name, not a "License ::" classifier: setuptools deprecates those.
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Programming Language :: Python :: 3",
        "Operating System :: OS Independent",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    keywords=[
        "patchup", "mixup", "manifold mixup", "cutmix", "cutout", "dropblock",
        "regularization", "data augmentation", "keras", "tensorflow", "cnn",
    ],
    packages=find_packages(include=["patchup_tf", "patchup_tf.*"]),
    python_requires=">=3.9",
    # The library (mixing ops, layers, models, MixingModel, attach) needs Keras
    # and NumPy only and runs on any Keras backend; the trainer and its
    # programs (the application, patchup_tf.app) need the
    # `train` extra.
    install_requires=["keras>=3.0", "numpy"],
    extras_require={
        # TensorFlow, the tf.data pipelines, TFDS, the .mat reader (SVHN), the
        # digits quick start and the plots.
        "train": TRAIN,
        "jax": JAX,
        # The version the tests run. It is the CPU build only where the index
        # serves a CPU wheel under that version (PyTorch's CPU index,
        # `--index-url https://download.pytorch.org/whl/cpu`, or PyPI on macOS
        # and Windows); on Linux PyPI serves the CUDA build, which pulls
        # several gigabytes of CUDA libraries.
        "torch": TORCH,
        "hub": ["keras-hub>=0.32"],
        # Everything the tests use: the trainer, the JAX and PyTorch runs of
        # tests/any_backend (tests/test_backends.py) and the test tools.
        "test": TRAIN + JAX + TORCH + ["pytest", "pytest-xdist", "hypothesis"],
    },
    entry_points={
        "console_scripts": [
            "patchup-train = patchup_tf.app.cli.train:main",
            "patchup-evaluate = patchup_tf.app.cli.evaluate:main",
            "patchup-make-affine-sets = patchup_tf.app.cli.make_affine_sets:main",
            "patchup-visualize = patchup_tf.app.cli.visualize:main",
            "patchup-sweep = patchup_tf.app.cli.sweep:main",
            "patchup-compare = patchup_tf.app.cli.compare:main",
        ],
    },
)
