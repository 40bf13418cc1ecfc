"""The open gallery: database engine, the one write path, FAISS caches, lazily created detector/embedders.

The database is the truth; FAISS files are caches (:mod:`gallery.indexes`). Every write goes through
:meth:`Gallery.writing` (:mod:`gallery.writing`): an inter-process file lock on ``<home>/gallery.lock`` (a second
writer waits up to ``Settings.lock_timeout_s`` and then fails with :class:`GalleryBusyError`), one transaction,
then the index updates. Readers take no lock: SQLite in WAL mode gives them a consistent snapshot while a writer
commits.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db import queries as q
from db.session import integrity_problems, make_engine
from gallery.config import Settings
from gallery.errors import GalleryBusyError, StoreWriteError
from gallery.indexes import Stamp, open_index_cache
from gallery.opening import no_gallery, open_store
from gallery.writing import Write
from indexer.detect import Detector, DetectorConfig
from indexer.embedders import create_embedder
from indexer.vector_index import VectorIndex

log = logging.getLogger(__name__)

EmbedderFactory = Callable[..., object]


def default_detector(s: Settings) -> Detector:
    """The MTCNN detector a gallery with these settings uses (built lazily on first use)."""
    low = min(s.min_face_prob, s.enroll_min_prob)
    return Detector(DetectorConfig(min_face_size=s.min_face_size, min_prob=low, device=s.device))


class Gallery:
    """One gallery (a home folder plus a database). Use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        detector: Detector | None = None,
        embedder_factory: EmbedderFactory | None = None,
        create: bool = True,
        check: bool = True,
    ):
        """Open the gallery of ``settings``. ``create``: make a new one when none exists; with False (the CLI's
        readers) a gallery that was never made stays unmade and every read or write raises
        :class:`NoGalleryError` until :meth:`create`. ``check=False`` opens without looking at the database
        (``restore``, which replaces it). A lost or unreadable database raises :class:`GalleryDamagedError`
        (:mod:`gallery.opening`)."""
        self.settings = settings or Settings()
        self.engine = make_engine(self.settings.db_url)
        self.exists = True
        self._checked = check
        if check:
            try:
                self.exists = open_store(self.settings, self.engine, create=create)
            except BaseException:
                self.engine.dispose()
                raise
        self._detector = detector
        self._embedder_factory = embedder_factory or create_embedder
        self._embedders: dict[str, object] = {}
        self._mutex = threading.RLock()
        self._lock = FileLock(str(self.settings.lock_path))
        self._held = threading.local()  # this thread's writer-lock depth
        self._indexes = open_index_cache(self.settings, self.session, self._try_locked)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._indexes.close()
        self.engine.dispose()

    def session(self) -> Session:
        if not self.exists:
            raise no_gallery(self.settings)
        return Session(self.engine, expire_on_commit=False)

    def create(self) -> None:
        """Make the gallery when none exists yet (the first enroll, ``facegallery init``)."""
        if not self.exists:
            self.exists = open_store(self.settings, self.engine, create=True)

    # -- components ------------------------------------------------------------------------------------------
    @property
    def detector(self) -> Detector:
        with self._mutex:
            if self._detector is None:
                self._detector = default_detector(self.settings)
            return self._detector

    def confident(self, faces):
        """The faces a query reports: those at or above ``Settings.min_face_prob``."""
        return [f for f in faces if f.prob >= self.settings.min_face_prob]

    def embedder(self, model: str):
        """The embedder ``model`` with this gallery's device and weights (raises WeightsNotFoundError offline)."""
        with self._mutex:
            if model not in self._embedders:
                s = self.settings
                options = {"engine": s.dlib_engine} if model == "dlib" and s.dlib_engine else {}
                self._embedders[model] = self._embedder_factory(
                    model, device=s.device, weights=s.weights.get(model), weights_dir=s.weights_dir, fast=s.fast,
                    **options,
                )
            return self._embedders[model]

    # -- writes ----------------------------------------------------------------------------------------------
    @contextmanager
    def writing(self, models: Sequence[str] = ()) -> Iterator[Write]:
        """The one way to change a gallery: writer lock, one transaction, then the index updates.

        ``models`` are the embedders whose indexes the write will change by a delta (loaded now, before the
        write, so the committed rows can be applied to them without re-reading every vector); any other
        embedder the write touches is rebuilt from the database on next use. See :mod:`gallery.writing`.
        """
        with self.write_lock():
            before = {m: self._indexes.get(m) for m in models}
            try:
                with self.session() as s, s.begin():
                    write = Write(s)
                    yield write
                    for m in write.changes:
                        q.bump_generation(s, m, write.weights.get(m))
            except DBAPIError as exc:  # rolled back: one line for the user, a skipped photo for enroll
                orig = exc.orig if exc.orig is not None else exc
                raise StoreWriteError(f"the database refused the write ({type(orig).__name__}: "
                                      f"{str(orig).splitlines()[0] if str(orig) else ''}); nothing of it was "
                                      f"stored") from exc
            for m, changes in write.changes.items():
                if m not in before:
                    changes.stale = True
                self._indexes.apply(m, before.get(m), changes)
            for m, kind in write.reindex.items():
                self._indexes.reindex(m, kind)

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold the inter-process writer lock (re-entrant within this thread).

        When the outermost hold ends, changed index files are saved and temporary files that a killed writer
        left behind are deleted.
        """
        depth = getattr(self._held, "depth", 0)
        if not self.exists:  # the lock file marks a gallery with a past: never left where none was made
            raise no_gallery(self.settings)
        if depth == 0:
            self._acquire()
        self._held.depth = depth + 1
        try:
            if depth == 0:
                self.sweep_temp_files()
                self._finish_erasures()
            yield
        finally:
            self._held.depth = depth
            if depth == 0:
                try:
                    self.save_indexes()
                finally:
                    self._lock.release()

    def _finish_erasures(self) -> None:
        """Finish the erasures a killed ``forget`` left (:mod:`gallery.manage.erasure`); never stops a writer."""
        if not self._checked:
            return
        from gallery.manage.erasure import finish_pending  # above the store: imported when first needed

        try:
            finish_pending(self)
        except Exception:  # noqa: BLE001 - logged; `forget --finish` reports it
            log.warning("could not finish a pending erasure (run facegallery forget --finish)", exc_info=True)

    def save_indexes(self) -> None:
        """Save every index file that lags behind its committed rows, then delete temporary files (an
        interrupted save may have left a copy of forgotten vectors). Call while holding the writer lock."""
        self._indexes.flush()
        self.sweep_temp_files()

    def _acquire(self) -> None:
        wait = self.settings.lock_timeout_s
        try:
            try:
                self._lock.acquire(timeout=0)
            except Timeout:
                log.warning("the gallery %s is busy (another facegallery process is writing): waiting up to %g s",
                            self.settings.home, wait)
                self._lock.acquire(timeout=wait)
        except Timeout as exc:
            raise GalleryBusyError(
                f"gallery is busy: another facegallery process is writing to {self.settings.home} "
                f"(waited {wait:g} s for {self.settings.lock_path}; --lock-timeout to wait longer)"
            ) from exc

    def _try_locked(self, action: Callable[[], None]) -> bool:
        """Run ``action`` under the writer lock if it is free now; a reader never waits for a writer."""
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            log.debug("not saving an index: a writer holds the lock")
            return False
        try:
            action()
        finally:
            self._lock.release()
        return True

    def sweep_temp_files(self) -> list[Path]:
        """Delete temporary files that a killed writer left in the index and heads folders.

        Called while holding the write lock: no live writer owns one then. They are deleted, never trusted: an
        interrupted save may hold vectors or names of people forgotten since.
        """
        removed = []
        for folder in (self.settings.index_dir, self.settings.heads_dir):
            for path in folder.iterdir() if folder.is_dir() else ():
                if ".tmp" in path.name and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted writer", len(removed))
        return removed

    # -- FAISS caches ----------------------------------------------------------------------------------------
    def index(self, model: str) -> VectorIndex | None:
        """The up-to-date index for ``model`` (None when the gallery holds no vectors for it)."""
        return self._indexes.get(model)

    def index_path(self, model: str) -> Path:
        return self._indexes.path(model)

    def index_stamp(self, model: str) -> Stamp:
        """The database state ``model``'s index must mirror."""
        return self._indexes.stamp(model)

    def forget_cached_index(self, model: str) -> None:
        """Drop the in-memory copy so the next :meth:`index` call reloads or rebuilds it."""
        self._indexes.drop(model)

    def integrity_problems(self, full: bool = False) -> list[str] | None:
        """What SQLite's own check finds wrong in the database file ([] when sound; None on PostgreSQL)."""
        if not self.exists:
            raise no_gallery(self.settings)
        return integrity_problems(self.engine, full)

    def models_in_store(self) -> list[str]:
        """The embedders enrolled people have vectors of."""
        with self.session() as s:
            return q.embedders_in_store(s)

    def vector_sets(self) -> list[str]:
        """Every key with an index: the enrolled embedders and the library's (``library_<embedder>``)."""
        with self.session() as s:
            return q.embedders_in_store(s) + [q.library_key(m) for m in q.library_models(s)]
