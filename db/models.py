"""SQLAlchemy 2.0 models: the gallery's source of truth.

People own photos, photos own detected faces, faces own embeddings (one row per embedder x augmentation copy,
the vector itself stored as raw float32 bytes). Those are the *enrolled* reference photos that identify searches.

A scanned photo *library* (``facegallery scan``) lives beside them in its own three tables: library photos own
every face found in them, each face owns one vector per embedder. A library face has no person until one is
assigned (naming its cluster, ``move``); it may carry a *suggested* person (the enrolled person it matched at the
open-set threshold) and a persistent cluster id. Library vectors never enter identify's indexes: they have their
own index per embedder (key ``library_<embedder>``). Naming a face also enrolls it: an enrolled photo row
(path ``<library path>#face<id>``) with a copy of its vectors, which ``unassign``` deletes again. FAISS index files are caches built from the ``embeddings`` table;
``index_state`` holds a per-embedder generation counter that every change bumps inside the same transaction, so
an index file stamped with an older generation is known to be stale.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SCHEMA_VERSION = 2
# Versions this facegallery upgrades in place when it opens them. 1 -> 2 only added the library tables
# (``library_photos``, ``library_faces``, ``library_embeddings``), which ``create_all`` makes.
UPGRADABLE_VERSIONS = (1,)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about the store itself (schema version, creation time)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class DetectedBox:
    """What the detector reported of a face, shared by enrolled and library faces: the box, its probability and
    the five landmarks, in the photo's pixels."""

    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)
    prob: Mapped[float] = mapped_column(Float)
    landmarks: Mapped[list | None] = mapped_column(JSON, nullable=True)

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


class Person(Base):
    __tablename__ = "people"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    photos: Mapped[list[Photo]] = relationship(
        back_populates="person", cascade="all, delete-orphan", passive_deletes=True
    )


class Photo(Base):
    __tablename__ = "photos"
    __table_args__ = (UniqueConstraint("person_id", "path", name="uq_photo_person_path"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    faces_detected: Mapped[int] = mapped_column(Integer, default=0)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    person: Mapped[Person] = relationship(back_populates="photos")
    faces: Mapped[list[Face]] = relationship(
        back_populates="photo", cascade="all, delete-orphan", passive_deletes=True
    )


class Face(DetectedBox, Base):
    __tablename__ = "faces"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), index=True)
    fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    photo: Mapped[Photo] = relationship(back_populates="faces")
    embeddings: Mapped[list[Embedding]] = relationship(
        back_populates="face", cascade="all, delete-orphan", passive_deletes=True
    )


class Embedding(Base):
    __tablename__ = "embeddings"
    __table_args__ = (
        UniqueConstraint("face_id", "embedder", "aug_index", name="uq_embedding_face_model_aug"),
        Index("ix_embeddings_embedder_id", "embedder", "id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), index=True)
    embedder: Mapped[str] = mapped_column(String(32))
    weights_sha256: Mapped[str] = mapped_column(String(80))
    aug_index: Mapped[int] = mapped_column(Integer)  # 0 = the original crop
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian, L2-normalised
    face: Mapped[Face] = relationship(back_populates="embeddings")


class IndexState(Base):
    """Per-embedder generation counter, bumped in every transaction that changes that embedder's embeddings."""

    __tablename__ = "index_state"
    embedder: Mapped[str] = mapped_column(String(32), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    weights_sha256: Mapped[str | None] = mapped_column(String(80), nullable=True)


class Setting(Base):
    """Gallery-wide settings such as calibrated thresholds (key like ``threshold.dlib``)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class ApiKey(Base):
    """A key of the HTTP service (``facegallery keys``). Only the sha256 of the token is stored: the token is
    shown once, at creation. ``scope`` is read or write; a revoked key keeps its row (``revoked_at``) for the
    record and no longer authenticates."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the token's first characters, to tell keys apart
    scope: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PendingErasure(Base):
    """A forgotten person whose erasure is not finished yet: their rows are gone (deleted in the transaction that
    added this row), but index files, heads and free pages of the database files may still hold their data until
    ``forget`` finishes (rebuild, delete, compact). A killed ``forget`` leaves the row; the next writer or
    ``forget --finish`` completes it. Holds the person's former id only, never their name."""

    __tablename__ = "pending_erasures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(Integer)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class LibraryPhoto(Base):
    """A photo of a scanned library (``path``: absolute), under the library folder ``root`` it was scanned from.
    A photo in which no face was found keeps its row (``faces_detected`` 0) so a re-scan knows it is done."""

    __tablename__ = "library_photos"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root: Mapped[str] = mapped_column(Text, index=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    faces_detected: Mapped[int] = mapped_column(Integer, default=0)
    scanned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    faces: Mapped[list[LibraryFace]] = relationship(
        back_populates="photo", cascade="all, delete-orphan", passive_deletes=True
    )


class LibraryFace(DetectedBox, Base):
    """One face found in a library photo. ``person_id``: assigned (named); ``suggested_*``: the enrolled person
    it matched best at the open-set threshold, not assigned; ``cluster_id``: persistent cluster of unassigned
    faces (``facegallery clusters``)."""

    __tablename__ = "library_faces"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    photo_id: Mapped[int] = mapped_column(ForeignKey("library_photos.id", ondelete="CASCADE"), index=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id", ondelete="SET NULL"), nullable=True,
                                                  index=True)
    suggested_person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id", ondelete="SET NULL"),
                                                            nullable=True, index=True)
    suggested_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    cluster_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    photo: Mapped[LibraryPhoto] = relationship(back_populates="faces")
    embeddings: Mapped[list[LibraryEmbedding]] = relationship(
        back_populates="face", cascade="all, delete-orphan", passive_deletes=True
    )


class LibraryEmbedding(Base):
    """One library face's vector for one embedder (no augmented copies: a library is searched, not enrolled)."""

    __tablename__ = "library_embeddings"
    __table_args__ = (
        UniqueConstraint("face_id", "embedder", name="uq_library_embedding_face_model"),
        Index("ix_library_embeddings_embedder_id", "embedder", "id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    face_id: Mapped[int] = mapped_column(ForeignKey("library_faces.id", ondelete="CASCADE"), index=True)
    embedder: Mapped[str] = mapped_column(String(32))
    weights_sha256: Mapped[str] = mapped_column(String(80))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian, L2-normalised
    face: Mapped[LibraryFace] = relationship(back_populates="embeddings")
