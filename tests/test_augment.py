"""Tests for indexer.augment on small generated crops."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.augment import AugmentConfig, aug_seed, augment

OFF = dict(flip_p=0.0, rotation_degrees=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
           grayscale_p=0.0, blur_p=0.0)


@pytest.fixture(scope="module")
def crop() -> Image.Image:
    """A non-square, structured RGB 'face crop': smooth gradients plus an asymmetric dark block."""
    y, x = np.mgrid[0:72, 0:56]
    arr = np.stack([x * 4, y * 3, 255 - x * 2], axis=-1).astype(np.uint8)
    arr[10:30, 5:20] = (20, 30, 40)
    return Image.fromarray(arr)


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_deterministic(crop):
    first, second = augment(crop, 4, seed=7), augment(crop, 4, seed=7)
    assert len(first) == 4
    assert all(_same(a, b) for a, b in zip(first, second))


def test_prefix_property(crop):
    five, three = augment(crop, 5, seed=11), augment(crop, 3, seed=11)
    assert all(_same(a, b) for a, b in zip(five[:3], three))


def test_different_seeds_and_copies_differ(crop):
    a, b = augment(crop, 3, seed=1), augment(crop, 3, seed=2)
    assert not any(_same(x, y) for x, y in zip(a, b))
    assert not _same(a[0], a[1]) and not _same(a[1], a[2])
    assert not any(_same(x, crop) for x in a)  # the original is never among the copies


def test_k_zero_and_bad_arguments(crop):
    assert augment(crop, 0, seed=3) == []
    with pytest.raises(ValueError):
        augment(crop, -1, seed=3)
    with pytest.raises(ValueError):
        augment(crop, 1, seed=-3)
    with pytest.raises(ValueError):
        augment(crop.convert("RGBA"), 1, seed=3)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_size_and_mode_preserved(crop, mode):
    source = crop.convert(mode)
    config = AugmentConfig(grayscale_p=1.0, blur_p=1.0)  # exercise every op, including grey output on RGB
    for out in augment(source, 6, seed=5, config=config):
        assert out.size == (56, 72) and out.mode == mode


def test_independent_of_global_rng(crop):
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    first = augment(crop, 3, seed=9)
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    assert all(_same(a, b) for a, b in zip(first, augment(crop, 3, seed=9)))


def test_flip_only_mirrors(crop):
    out = augment(crop, 1, seed=0, config=AugmentConfig(**{**OFF, "flip_p": 1.0}))[0]
    assert np.array_equal(np.asarray(out), np.asarray(crop)[:, ::-1])


def test_everything_off_is_identity(crop):
    assert all(_same(out, crop) for out in augment(crop, 3, seed=4, config=AugmentConfig(**OFF)))


def test_rotation_fill(crop):
    solid = Image.new("RGB", (60, 80), (200, 40, 40))
    reflect = AugmentConfig(**{**OFF, "rotation_degrees": 15.0})
    for out in augment(solid, 4, seed=21, config=reflect):
        assert np.abs(np.asarray(out).astype(int) - (200, 40, 40)).max() <= 1  # no black corner wedges
    black = AugmentConfig(**{**OFF, "rotation_degrees": 15.0, "rotation_fill": "constant"})
    corners = [np.asarray(out)[0, 0] for out in augment(solid, 4, seed=21, config=black)]
    assert any(tuple(c) == (0, 0, 0) for c in corners)
    rotated = augment(crop, 4, seed=21, config=reflect)
    assert not any(_same(out, crop) for out in rotated)  # the structured crop really turns


def test_config_validation():
    with pytest.raises(ValueError):
        AugmentConfig(flip_p=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(hue=0.7)
    with pytest.raises(ValueError):
        AugmentConfig(rotation_fill="wrap")
    with pytest.raises(ValueError):
        AugmentConfig(blur_kernel=(4, 4))
    with pytest.raises(ValueError):
        AugmentConfig(blur_sigma=(0.0, 1.0))
    assert AugmentConfig().rotation_degrees == 15.0


def test_aug_seed():
    key = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    seed = aug_seed(42, key)
    assert seed == aug_seed(42, key)
    assert isinstance(seed, int) and 0 <= seed < 2 ** 63
    assert seed != aug_seed(43, key) and seed != aug_seed(42, key[:-1] + "9")
    assert aug_seed(0, "abc") == 3428149035147265119  # pinned: must not change between runs or Python versions
