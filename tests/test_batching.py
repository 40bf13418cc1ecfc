"""Micro-batching without HTTP (gallery/recognize/batching.py): concurrent calls joined into one, each caller
handed its own slice, a bounded queue that refuses instead of growing, one bad call not failing the others, and
identify / verify / enroll giving the same answers through the batching wrappers as without them."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gallery.config import Settings
from gallery.enroll.enroll import enroll_images
from gallery.errors import QueueFullError
from gallery.recognize.batching import BatchOptions, MicroBatcher, open_batched, warm_up
from gallery.recognize.identify import identify
from gallery.recognize.verify import verify
from gallery.store import Gallery
from tests.fakes import FakeDetector, fake_factory, person_image


class Gate:
    """A batch function that blocks its first run until released, recording each run's items."""

    def __init__(self):
        self.runs: list[list] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, items):
        self.runs.append(list(items))
        self.entered.set()
        assert self.release.wait(30)
        if any(i == "bad" for i in items):
            raise ValueError("bad item")
        return [f"r{i}" for i in items]


def _submit(batcher, items, out, key):
    try:
        out[key] = batcher(items)
    except Exception as exc:  # noqa: BLE001 - recorded for the assertions
        out[key] = exc


def _wait_queued(batcher, n):
    deadline = time.monotonic() + 30
    while batcher._queue.qsize() < n:
        assert time.monotonic() < deadline, "calls never reached the queue"
        time.sleep(0.005)


def test_calls_waiting_together_are_joined_into_one_run_and_each_gets_its_slice():
    gate = Gate()
    batcher = MicroBatcher(gate, BatchOptions(max_batch=100, max_wait_ms=50, max_queue=10), name="test")
    out: dict = {}
    first = threading.Thread(target=_submit, args=(batcher, [0], out, "first"))
    first.start()
    assert gate.entered.wait(30)  # the first call is running; the next ones queue behind it
    threads = [threading.Thread(target=_submit, args=(batcher, [10 * k + j for j in range(k)], out, k))
               for k in range(1, 5)]
    for t in threads:
        t.start()
    _wait_queued(batcher, 4)
    gate.release.set()
    for t in [first, *threads]:
        t.join(30)
    batcher.close()
    assert out["first"] == ["r0"]
    for k in range(1, 5):
        assert out[k] == [f"r{10 * k + j}" for j in range(k)]
    assert len(gate.runs) == 2 and sorted(gate.runs[1]) == sorted(10 * k + j for k in range(1, 5) for j in range(k))
    stats = batcher.stats()
    assert (stats.runs, stats.calls, stats.items, stats.largest) == (2, 5, 11, 10)


def test_a_full_queue_refuses_at_once_instead_of_growing():
    gate = Gate()
    batcher = MicroBatcher(gate, BatchOptions(max_batch=1, max_wait_ms=0, max_queue=2), name="detector")
    out: dict = {}
    running = threading.Thread(target=_submit, args=(batcher, [0], out, "running"))
    running.start()
    assert gate.entered.wait(30)
    waiting = [threading.Thread(target=_submit, args=(batcher, [k], out, k)) for k in (1, 2)]
    for t in waiting:
        t.start()
    _wait_queued(batcher, 2)
    with pytest.raises(QueueFullError, match="the server is busy: 2 requests are already waiting for the detector"):
        batcher([3])
    gate.release.set()
    for t in [running, *waiting]:
        t.join(30)
    batcher.close()
    assert out == {"running": ["r0"], 1: ["r1"], 2: ["r2"]}


def test_one_failing_call_does_not_fail_the_calls_joined_with_it():
    gate = Gate()
    batcher = MicroBatcher(gate, BatchOptions(max_batch=100, max_wait_ms=50, max_queue=10))
    out: dict = {}
    first = threading.Thread(target=_submit, args=(batcher, [0], out, "first"))
    first.start()
    assert gate.entered.wait(30)
    threads = [threading.Thread(target=_submit, args=(batcher, items, out, key))
               for key, items in (("good", [1, 2]), ("bad", ["bad"]), ("also good", [3]))]
    for t in threads:
        t.start()
    _wait_queued(batcher, 3)
    gate.release.set()
    for t in [first, *threads]:
        t.join(30)
    batcher.close()
    assert out["good"] == ["r1", "r2"] and out["also good"] == ["r3"]
    assert isinstance(out["bad"], ValueError)


def test_results_of_the_wrong_length_are_an_error_not_a_misaligned_answer():
    batcher = MicroBatcher(lambda items: items[:-1], BatchOptions(max_wait_ms=0))
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        batcher([1, 2])
    batcher.close()


def _jpg(seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    person_image(seed).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _gallery_pair(tmp_path):
    settings = Settings(home=tmp_path / "g", progress=False)
    plain = Gallery(settings, detector=FakeDetector(), embedder_factory=fake_factory())
    batched_gallery, batched = open_batched(settings, BatchOptions(max_wait_ms=20), detector=FakeDetector(),
                                            embedder_factory=fake_factory())
    return plain, batched_gallery, batched


def test_identify_verify_and_enroll_answer_the_same_through_the_batching_wrappers(tmp_path):
    plain, bg, batched = _gallery_pair(tmp_path)
    try:
        for p in range(3):
            rep = enroll_images(bg, f"person_{p}", [(f"{i}.jpg", _jpg(100 * p + i)) for i in range(2)],
                                models=["dlib"], augment=1)
            assert len(rep.enrolled) == 2 and rep.embeddings_added == {"dlib": 4}
        assert warm_up(bg) == ["dlib"]
        queries = [(f"q{p}.jpg", _jpg(100 * p + 7)) for p in range(3)] + [("blank.png", _blank_png())]
        results: dict = {}

        def ask(i):
            results[i] = identify(bg, [queries[i]]).to_dict()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i, src in enumerate(queries):
            assert results[i] == identify(plain, [src]).to_dict()
        assert [results[p]["images"][0]["faces"][0]["models"]["dlib"]["identity"] for p in range(3)] == \
               ["person_0", "person_1", "person_2"]
        assert results[3]["images"][0]["faces"] == []  # no face: an empty answer, as without batching
        a, b = queries[0], (queries[0][0], _jpg(8))
        assert verify(bg, a, b).to_dict() == verify(plain, a, b).to_dict()
        stats = batched.stats()
        assert stats["detector"].calls >= 3 + 4 + 2 and stats["dlib"].items > 0
    finally:
        batched.close()
        bg.close()
        plain.close()


def test_embeddings_through_the_wrapper_are_the_inner_embedders(tmp_path):
    plain, bg, batched = _gallery_pair(tmp_path)
    try:
        crops = [person_image(s).resize((16, 16)) for s in range(5)]
        got = bg.embedder("dlib").embed_crops(crops)
        want = plain.embedder("dlib").embed_crops(crops)
        assert got.dtype == np.float32 and np.array_equal(got, want)
        assert bg.embedder("dlib").weights == plain.embedder("dlib").weights  # attributes pass through
    finally:
        batched.close()
        bg.close()
        plain.close()


def _blank_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (80, 80), (120, 120, 120)).save(buf, "PNG")
    return buf.getvalue()
