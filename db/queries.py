"""Query helpers over the store. Every function takes a Session and never commits: the caller owns transactions."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.models import Embedding, Face, IndexState, Person, Photo, Setting


def vector_to_bytes(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def bytes_to_vector(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def get_or_create_person(s: Session, name: str) -> Person:
    person = s.scalar(select(Person).where(Person.name == name))
    if person is None:
        person = Person(name=name)
        s.add(person)
        s.flush()
    return person


def person_by_name(s: Session, name: str) -> Person | None:
    return s.scalar(select(Person).where(Person.name == name))


def photos_of(s: Session, person_id: int) -> dict[str, Photo]:
    """The person's photos keyed by their stored path."""
    rows = s.scalars(select(Photo).where(Photo.person_id == person_id))
    return {p.path: p for p in rows}


def embedded_models(s: Session, photo_id: int) -> set[str]:
    stmt = (
        select(Embedding.embedder)
        .join(Face, Face.id == Embedding.face_id)
        .where(Face.photo_id == photo_id)
        .distinct()
    )
    return set(s.scalars(stmt))


def generation(s: Session, embedder: str) -> int:
    state = s.get(IndexState, embedder)
    return state.generation if state else 0


def bump_generation(s: Session, embedder: str, weights_sha256: str | None = None) -> int:
    state = s.get(IndexState, embedder)
    if state is None:
        state = IndexState(embedder=embedder, generation=0)
        s.add(state)
    state.generation += 1
    if weights_sha256 is not None:
        state.weights_sha256 = weights_sha256
    s.flush()
    return state.generation


def stored_weights(s: Session, embedder: str) -> str | None:
    """sha256 of the weights that made the embedder's stored vectors (None when it holds none)."""
    return s.scalar(select(Embedding.weights_sha256).where(Embedding.embedder == embedder).limit(1))


def embedders_in_store(s: Session) -> list[str]:
    return sorted(s.scalars(select(Embedding.embedder).distinct()))


def count_embeddings(s: Session, embedder: str) -> int:
    return s.scalar(select(func.count(Embedding.id)).where(Embedding.embedder == embedder)) or 0


def iter_vectors(s: Session, embedder: str, chunk: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (ids int64, vectors float32) for every stored vector of ``embedder`` in id order, chunk by chunk."""
    last = 0
    while True:
        rows = s.execute(
            select(Embedding.id, Embedding.vector)
            .where(Embedding.embedder == embedder, Embedding.id > last)
            .order_by(Embedding.id)
            .limit(chunk)
        ).all()
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.stack([bytes_to_vector(r[1]) for r in rows])
        yield ids, vecs
        last = int(ids[-1])


def embedding_ids(s: Session, embedder: str, person_id: int | None = None) -> np.ndarray:
    stmt = select(Embedding.id).where(Embedding.embedder == embedder)
    if person_id is not None:
        stmt = stmt.join(Face, Face.id == Embedding.face_id).join(Photo, Photo.id == Face.photo_id)
        stmt = stmt.where(Photo.person_id == person_id)
    return np.array(list(s.scalars(stmt)), dtype=np.int64)


def vectors_of_person(s: Session, embedder: str, person_id: int) -> tuple[np.ndarray, np.ndarray]:
    stmt = (
        select(Embedding.id, Embedding.vector)
        .join(Face, Face.id == Embedding.face_id)
        .join(Photo, Photo.id == Face.photo_id)
        .where(Embedding.embedder == embedder, Photo.person_id == person_id)
    )
    rows = s.execute(stmt).all()
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.array([r[0] for r in rows], np.int64), np.stack([bytes_to_vector(r[1]) for r in rows])


def owners(s: Session, ids: Sequence[int]) -> dict[int, tuple[int, str, int, int]]:
    """embedding id -> (person id, person name, photo id, aug index) for the given ids."""
    if len(ids) == 0:
        return {}
    out: dict[int, tuple[int, str, int, int]] = {}
    unique = sorted({int(i) for i in ids})
    for start in range(0, len(unique), 900):  # stay under SQLite's bound-parameter limit
        part = unique[start : start + 900]
        stmt = (
            select(Embedding.id, Person.id, Person.name, Photo.id, Embedding.aug_index)
            .join(Face, Face.id == Embedding.face_id)
            .join(Photo, Photo.id == Face.photo_id)
            .join(Person, Person.id == Photo.person_id)
            .where(Embedding.id.in_(part))
        )
        for emb_id, pid, name, photo_id, aug in s.execute(stmt):
            out[emb_id] = (pid, name, photo_id, aug)
    return out


def people_counts(s: Session) -> list[tuple[int, str, int, int, dict[str, int]]]:
    """(person id, name, photos, faces, {embedder: embeddings}) for every person, by name."""
    people = s.execute(select(Person.id, Person.name).order_by(Person.name)).all()
    photos = dict(s.execute(select(Photo.person_id, func.count(Photo.id)).group_by(Photo.person_id)).all())
    faces = dict(
        s.execute(
            select(Photo.person_id, func.count(Face.id)).join(Face, Face.photo_id == Photo.id).group_by(Photo.person_id)
        ).all()
    )
    emb: dict[int, dict[str, int]] = {}
    stmt = (
        select(Photo.person_id, Embedding.embedder, func.count(Embedding.id))
        .join(Face, Face.photo_id == Photo.id)
        .join(Embedding, Embedding.face_id == Face.id)
        .group_by(Photo.person_id, Embedding.embedder)
    )
    for pid, model, n in s.execute(stmt):
        emb.setdefault(pid, {})[model] = n
    return [(pid, name, photos.get(pid, 0), faces.get(pid, 0), emb.get(pid, {})) for pid, name in people]


def delete_photo(s: Session, photo: Photo) -> dict[str, list[int]]:
    """Delete a photo (faces and embeddings cascade); returns the removed embedding ids per embedder."""
    stmt = select(Embedding.id, Embedding.embedder).join(Face, Face.id == Embedding.face_id).where(
        Face.photo_id == photo.id
    )
    removed: dict[str, list[int]] = {}
    for emb_id, model in s.execute(stmt):
        removed.setdefault(model, []).append(emb_id)
    face_ids = select(Face.id).where(Face.photo_id == photo.id)
    s.execute(delete(Embedding).where(Embedding.face_id.in_(face_ids)))
    s.execute(delete(Face).where(Face.photo_id == photo.id))
    s.execute(delete(Photo).where(Photo.id == photo.id))
    return removed


def delete_person(s: Session, person: Person) -> dict[str, list[int]]:
    removed: dict[str, list[int]] = {}
    for photo in list(s.scalars(select(Photo).where(Photo.person_id == person.id))):
        for model, ids in delete_photo(s, photo).items():
            removed.setdefault(model, []).extend(ids)
    s.execute(delete(Person).where(Person.id == person.id))
    s.expunge_all()
    return removed


def get_setting(s: Session, key: str) -> str | None:
    row = s.get(Setting, key)
    return row.value if row else None


def set_setting(s: Session, key: str, value: str) -> None:
    row = s.get(Setting, key)
    if row is None:
        s.add(Setting(key=key, value=value))
    else:
        row.value = value
    s.flush()


def all_settings(s: Session, prefix: str = "") -> dict[str, str]:
    rows = s.scalars(select(Setting).where(Setting.key.startswith(prefix)))
    return {r.key: r.value for r in rows}
