"""Shared pytest fixtures.

The labelled face sets live outside the repository (../shared/data in this workplace). Tests that need them
ask for the ``data_dir`` fixture, which reads ``--data-dir`` or the ``FACEGALLERY_DATA`` environment variable
and skips cleanly when neither points at an existing folder.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_CACHE_ENV = "FACEGALLERY_CACHE"  # indexer.onnx_cache.CACHE_ENV (not imported here: conftest stays light)
_OWN_CACHE: list[str] = []


def pytest_addoption(parser):
    parser.addoption("--data-dir", default=None, help="folder with lfw/, five_celebrity/, att_faces/ ...")


def pytest_configure(config):
    """The stored ONNX graphs (MTCNN, dlib) go to a folder of this run, shared with the subprocesses tests start,
    not to the user's ~/.cache; exported once per run."""
    if not os.environ.get(_CACHE_ENV):
        _OWN_CACHE.append(tempfile.mkdtemp(prefix="facegallery-test-cache-"))
        os.environ[_CACHE_ENV] = _OWN_CACHE[0]


def pytest_unconfigure(config):
    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir(pytestconfig) -> Path:
    raw = pytestconfig.getoption("--data-dir") or os.environ.get("FACEGALLERY_DATA")
    if not raw:
        pytest.skip("labelled face data not configured (set FACEGALLERY_DATA or --data-dir)")
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        pytest.skip(f"labelled face data folder {path} does not exist")
    return path


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing from the data folder")
    return path


@pytest.fixture(scope="session")
def five_celebrity(data_dir) -> Path:
    return _need(data_dir / "five_celebrity")


@pytest.fixture(scope="session")
def lfw_dir(data_dir) -> Path:
    return _need(data_dir / "lfw")


@pytest.fixture(scope="session")
def att_faces(data_dir) -> Path:
    return _need(data_dir / "att_faces")


@pytest.fixture(scope="session")
def fp_images(data_dir) -> Path:
    return _need(data_dir / "facenet_pytorch_test_images")


def _one_torch_thread():
    """torch on one intra-op thread: on a small machine shared with other jobs, two OpenMP threads spin-wait on
    each other and MTCNN ran several times slower (113 s vs 22 s for test_benchmark's real-pipeline test)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


one_torch_thread = pytest.fixture(_one_torch_thread, name="one_torch_thread")
one_torch_thread_module = pytest.fixture(_one_torch_thread, scope="module", name="one_torch_thread_module")
