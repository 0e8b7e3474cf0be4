"""Tests of the deformed-image sets: geometry of each kind, agreement with
torchvision 0.4.2 + Pillow, seeding, and the atomic .npz round trip."""

import math
import os

import numpy as np
import pytest

from patchup_tf.app.evaluation import (
    AFFINE_SETS,
    affine_matrix,
    apply_affine,
    draw_affine_params,
    evaluate_affine_sets,
    evaluate_classifier,
    load_affine_set,
    make_affine_set,
    make_all_affine_sets,
    save_affine_set,
)
from patchup_tf.app.evaluation import affine as affine_module

C = 16  # torchvision's centre (16.5, 16.5) is pixel index 16 for 32x32


def _blank(n=1):
    return np.zeros((n, 32, 32, 3), np.uint8)


def _lit(img):
    ys, xs = np.nonzero(img[..., 0] > 0)
    return xs.astype(float), ys.astype(float)


def _principal_angle(img):
    """Angle (degrees, y down, in (-90, 90]) of the lit pixels' main axis."""
    xs, ys = _lit(img)
    cov = np.cov(np.stack([xs, ys]))
    vx, vy = np.linalg.eigh(cov)[1][:, -1]
    ang = math.degrees(math.atan2(vy, vx))
    return (ang + 90.0) % 180.0 - 90.0


def test_sets_are_the_eight_of_the_spec():
    assert list(AFFINE_SETS) == [
        "rotation_20", "rotation_40", "shear_28.6", "shear_57.3",
        "zoom_0.6", "zoom_0.8", "zoom_1.2", "zoom_1.4",
    ]
    assert AFFINE_SETS["shear_57.3"].range == (-57.3, 57.3)
    assert AFFINE_SETS["zoom_0.6"].value == 0.6


@pytest.mark.parametrize("name", ["rotation_20", "rotation_40"])
def test_rotation_sets_rotate_within_range(name):
    img = _blank(24)
    img[:, C, 4:29] = 255  # horizontal line through the centre
    out = make_affine_set(img, name, seed=5)
    drawn = draw_affine_params(name, 24, seed=5)
    measured = np.array([_principal_angle(o) for o in out])
    limit = AFFINE_SETS[name].range[1]
    assert np.all(np.abs(measured) <= limit + 2.0)
    assert measured.std() > limit / 4  # not always ~0
    # positive angles turn clockwise on screen (y down), as torchvision
    np.testing.assert_allclose(measured, drawn, atol=2.0)
    assert np.all(out[:, C, C, 0] == 255)  # the centre pixel stays put


@pytest.mark.parametrize("shear", [35.0, -35.0, 57.3])
def test_shear_shifts_rows_and_squashes_vertically(shear):
    s = math.radians(shear)
    for dy in (-10, -6, 6, 10):
        img = _blank()
        img[0, C + dy - 1:C + dy + 2, C - 1:C + 2] = 255  # 3x3 square at (C, C+dy)
        out = apply_affine(img, "shear", [shear])[0]
        xs, ys = _lit(out)
        assert xs.size > 0
        # docs/methods.md: x' = x - sin(s) y, y' = cos(s) y about the centre
        assert xs.mean() == pytest.approx(C - math.sin(s) * dy, abs=0.75)
        assert ys.mean() == pytest.approx(C + math.cos(s) * dy, abs=0.75)


def test_shear_set_angles_within_range():
    name = "shear_28.6"
    img = _blank(16)
    img[:, :, C - 1:C + 2] = 255  # vertical bar through the centre
    out = make_affine_set(img, name, seed=2)
    drawn = draw_affine_params(name, 16, seed=2)
    for o, d in zip(out, drawn):
        rows = [r for r in range(4, 28) if o[r, :, 0].any()]
        centres = np.array([np.nonzero(o[r, :, 0])[0].mean() for r in rows])
        slope = np.polyfit(np.array(rows, float) - C, centres - C, 1)[0]
        # the bar x = C maps to x' - C = -tan(s) (y' - C)
        assert math.degrees(math.atan(-slope)) == pytest.approx(d, abs=2.0)
    assert np.all(np.abs(drawn) <= 28.6) and drawn.std() > 5


@pytest.mark.parametrize("name,scale", [("zoom_0.6", 0.6), ("zoom_0.8", 0.8),
                                        ("zoom_1.2", 1.2), ("zoom_1.4", 1.4)])
def test_zoom_scales_a_square(name, scale):
    img = _blank(2)
    img[:, 6:26, 6:26] = 255  # 20x20 square
    out = make_affine_set(img, name, seed=0)
    np.testing.assert_array_equal(out[0], out[1])  # a fixed scale
    xs, ys = _lit(out[0])
    assert np.ptp(xs) + 1 == pytest.approx(20 * scale, abs=1.01)
    assert np.ptp(ys) + 1 == pytest.approx(20 * scale, abs=1.01)
    assert math.sqrt(xs.size / 400.0) == pytest.approx(scale, abs=0.06)


def _torchvision_042_inverse(angle, scale, shear, center):
    """torchvision 0.4.2 functional._get_inverse_affine_matrix (translate 0)."""
    angle, shear, scale = math.radians(angle), math.radians(shear), 1.0 / scale
    d = math.cos(angle + shear) * math.cos(angle) + math.sin(angle + shear) * math.sin(angle)
    m = [math.cos(angle + shear), math.sin(angle + shear), 0,
         -math.sin(angle), math.cos(angle), 0]
    m = [scale / d * v for v in m]
    m[2] += m[0] * -center[0] + m[1] * -center[1]
    m[5] += m[3] * -center[0] + m[4] * -center[1]
    m[2] += center[0]
    m[5] += center[1]
    return m


@pytest.mark.parametrize("name", list(AFFINE_SETS))
def test_matches_torchvision_with_pillow(name):
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(11)
    img = rng.integers(1, 256, size=(24, 32, 32, 3), dtype=np.uint8)
    out = make_affine_set(img, name, seed=9)
    kind = AFFINE_SETS[name].kind
    ref = []
    for im, v in zip(img, draw_affine_params(name, 24, seed=9)):
        angle, scale, shear = {"rotation": (v, 1.0, 0.0), "shear": (0.0, 1.0, v),
                               "zoom": (0.0, v, 0.0)}[kind]
        m = _torchvision_042_inverse(angle, scale, shear, (16.5, 16.5))
        ref.append(np.asarray(pil.fromarray(im).transform(
            (32, 32), pil.AFFINE, m, pil.NEAREST, fillcolor=0)))
    mismatch = np.any(out != np.stack(ref), axis=-1).mean()
    # Pillow rotates and shears in 16.16 fixed point (zoom in float64): a
    # few pixels whose source lies on a pixel boundary may differ.
    assert mismatch <= (0.0 if kind == "zoom" else 2e-3)
    assert not np.array_equal(out, img)  # the set is deformed


def test_affine_matrix_convention():
    s = math.radians(30.0)
    m = affine_matrix("shear", 30.0)
    np.testing.assert_allclose(m[:2, :2], [[1, -math.sin(s)], [0, math.cos(s)]])
    np.testing.assert_allclose(m @ [16.5, 16.5, 1.0], [16.5, 16.5, 1.0])
    np.testing.assert_allclose(affine_matrix("zoom", 0.6)[:2, :2], 0.6 * np.eye(2))
    batch = affine_matrix("rotation", [10.0, -20.0])
    assert batch.shape == (2, 3, 3)
    a = math.radians(-20.0)
    np.testing.assert_allclose(batch[1, :2, :2], [[math.cos(a), -math.sin(a)],
                                                  [math.sin(a), math.cos(a)]])
    # the inverse used for resampling is torchvision's
    for kind, v, args in [("rotation", 17.0, (17.0, 1.0, 0.0)),
                          ("shear", -40.0, (0.0, 1.0, -40.0)),
                          ("zoom", 1.4, (0.0, 1.4, 0.0))]:
        inv = np.linalg.inv(affine_matrix(kind, v))[:2].ravel()
        np.testing.assert_allclose(inv, _torchvision_042_inverse(*args, (16.5, 16.5)),
                                   atol=1e-12)


def test_seeding():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    a = make_affine_set(img, "rotation_40", seed=1)
    b = make_affine_set(img, "rotation_40", seed=1)
    c = make_affine_set(img, "rotation_40", seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(draw_affine_params("rotation_20", 6, 1) * 2,
                              draw_affine_params("rotation_40", 6, 1))


def test_bad_arguments():
    img = _blank()
    with pytest.raises(ValueError, match="name"):
        make_affine_set(img, "rotate_20", seed=0)
    with pytest.raises(ValueError, match="seed"):
        make_affine_set(img, "rotation_20", seed=-1)
    with pytest.raises(ValueError, match="uint8"):
        make_affine_set(img.astype(np.float32), "rotation_20", seed=0)
    with pytest.raises(ValueError, match="kind"):
        affine_matrix("flip", 1.0)


def test_make_all_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    labels = np.array([3, 0, 2, 2, 1])
    names = ["apple", "bear", "cloud", "dolphin"]
    paths = make_all_affine_sets(img, labels, names, str(tmp_path / "affine"), seed=4)
    assert [os.path.basename(p) for p in paths] == [n + ".npz" for n in AFFINE_SETS]
    assert sorted(os.listdir(tmp_path / "affine")) == sorted(n + ".npz" for n in AFFINE_SETS)
    for name, path in zip(AFFINE_SETS, paths):
        images, got_labels, got_names, desc = load_affine_set(path, name=name)
        assert images.dtype == np.uint8 and images.shape == img.shape
        np.testing.assert_array_equal(images, make_affine_set(img, name, seed=4))
        assert got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_labels, labels)
        assert got_names == names
        spec = AFFINE_SETS[name]
        assert desc["name"] == name and desc["kind"] == spec.kind and desc["seed"] == 4
        assert desc["centre"] == [16.5, 16.5]
        if spec.range is None:
            assert desc["value"] == spec.value
        else:
            assert desc["range"] == list(spec.range)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    img = _blank(2)
    path = tmp_path / "rotation_20.npz"
    save_affine_set(path, img, [0, 1], ["a", "b"], {"name": "old"})

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(affine_module.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_affine_set(path, img + 1, [1, 0], ["a", "b"], {"name": "new"})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["rotation_20.npz"]  # no temp file left
    images, labels, _, desc = load_affine_set(path)  # the old file, intact
    assert desc["name"] == "old"
    np.testing.assert_array_equal(images, img)
    np.testing.assert_array_equal(labels, [0, 1])


def test_load_rejects_bad_files(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(ValueError, match="nope.npz.*does not exist"):
        load_affine_set(missing)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an archive at all")
    with pytest.raises(ValueError, match="garbage.npz.*not a readable"):
        load_affine_set(garbage)

    good = tmp_path / "good.npz"
    save_affine_set(good, _blank(3), [0, 1, 1], ["a", "b"], {"name": "zoom_0.6"})
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        load_affine_set(truncated)

    with pytest.raises(ValueError, match="holds set 'zoom_0.6'"):
        load_affine_set(good, name="zoom_1.4")

    mismatched = tmp_path / "mismatched.npz"
    np.savez(mismatched, images=_blank(3), labels=np.array([0, 1]),
             class_names=np.array(["a", "b"]), description=np.array('{"name": "x"}'))
    with pytest.raises(ValueError, match="mismatched.npz.*3 images but 2 labels"):
        load_affine_set(mismatched)

    incomplete = tmp_path / "incomplete.npz"
    np.savez(incomplete, images=_blank(3))
    with pytest.raises(ValueError, match="incomplete.npz.*lacks"):
        load_affine_set(incomplete)

    floats = tmp_path / "floats.npz"
    np.savez(floats, images=_blank(2).astype(np.float32), labels=np.array([0, 1]),
             class_names=np.array(["a", "b"]), description=np.array('{"name": "x"}'))
    with pytest.raises(ValueError, match="floats.npz.*uint8"):
        load_affine_set(floats)


def test_evaluate_affine_sets_normalises_like_the_test_set(tmp_path):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(4)])
    rng = np.random.default_rng(8)
    img = rng.integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=7)
    mean, std = (129.3, 124.1, 112.4), (68.2, 65.4, 70.4)
    paths = make_all_affine_sets(img, labels, list("abcd"), str(tmp_path), seed=1)[::4]
    rows = evaluate_affine_sets(model, paths, mean, std, batch_size=3)
    assert [r["name"] for r in rows] == ["rotation_20", "zoom_0.6"]
    for row, name in zip(rows, ["rotation_20", "zoom_0.6"]):
        x = (make_affine_set(img, name, seed=1).astype(np.float32) - mean) / std
        want = evaluate_classifier(
            model, tf.data.Dataset.from_tensor_slices((x.astype(np.float32), labels)).batch(7))
        for key in ("top1", "top5", "error"):
            assert row[key] == pytest.approx(want[key], abs=1e-9)
        assert row["loss"] == pytest.approx(want["loss"], rel=1e-5)
