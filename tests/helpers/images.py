"""Folders of real image files (PNG, JPEG) for the image-folder tests."""

import os

import numpy as np
import tensorflow as tf

ENCODERS = {
    ".png": lambda x: tf.io.encode_png(x).numpy(),
    ".jpg": lambda x: tf.io.encode_jpeg(x, quality=95).numpy(),
}


def pixels(seed, size=(8, 8), channels=3):
    return np.random.default_rng(seed).integers(0, 256, (*size, channels), dtype=np.uint8)


def write_image(path, image, ext=".png"):
    """Writes real PNG/JPEG bytes (encoded by TensorFlow)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(ENCODERS[ext](image))
    return path


def make_folder(root, classes=("cat", "dog"), counts=None, size=(8, 8), ext=".png",
                splits=("train", "test")):
    """root/<split>/<class>/<i>.png with distinct seeded pixels; returns
    {path: pixels} of every image written."""
    written = {}
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            n = (counts or {}).get(split, 4)
            for i in range(n):
                image = pixels(1000 * s + 100 * c + i, size)
                path = os.path.join(root, split, name, f"{i:03d}{ext}")
                written[write_image(path, image, ext)] = image
    return written


# ------------------------------------------------------------------ listing
