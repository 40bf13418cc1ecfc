"""Query helpers over the store. Every function takes a Session and never commits: the caller owns transactions."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from db.models import ApiKey, Embedding, Face, IndexState, PendingErasure, Person, Photo, Setting

MAX_PARAMS = 900  # bound parameters per statement: under SQLite's limit


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
    for rows in iter_vector_rows(s, embedder, chunk):
        yield (np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
               np.stack([bytes_to_vector(r[1]) for r in rows]))


def iter_vector_rows(s: Session, embedder: str, chunk: int = 20_000) -> Iterator[list[tuple[int, bytes]]]:
    """Yield the raw ``(id, vector bytes)`` rows of ``embedder`` in id order, chunk by chunk, decoding nothing
    (a damaged row is the caller's to judge, not an exception here)."""
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
        yield [(int(r[0]), r[1]) for r in rows]
        last = int(rows[-1][0])


def vector_dim(s: Session, embedder: str) -> int | None:
    """The dimension most of ``embedder``'s stored vectors have (from their byte length); None when it has none."""
    length = func.length(Embedding.vector)
    row = s.execute(select(length, func.count(Embedding.id)).where(Embedding.embedder == embedder)
                    .group_by(length).order_by(func.count(Embedding.id).desc()).limit(1)).first()
    return None if row is None else int(row[0]) // 4


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
    for start in range(0, len(unique), MAX_PARAMS):
        part = unique[start : start + MAX_PARAMS]
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


def delete_photo_by_id(s: Session, photo_id: int) -> dict[str, list[int]]:
    """:func:`delete_photo` by id (nothing when it is gone already)."""
    photo = s.get(Photo, photo_id)
    if photo is None:
        return {}
    removed = delete_photo(s, photo)
    s.flush()
    return removed


def add_photo_with_face(s: Session, person: str, *, path: str, sha256: str, size_bytes: int, width: int,
                        height: int, faces_detected: int, box, prob: float, landmarks, fallback: bool) -> int:
    """Insert a photo of ``person`` (created when new) with its one enrolled face; returns the face id."""
    photo = Photo(person_id=get_or_create_person(s, person).id, path=path, sha256=sha256, size_bytes=size_bytes,
                  width=width, height=height, faces_detected=faces_detected)
    face = Face(photo=photo, x1=box[0], y1=box[1], x2=box[2], y2=box[3], prob=prob,
                landmarks=[list(p) for p in landmarks] if landmarks else None, fallback=fallback)
    s.add_all([photo, face])
    s.flush()
    return face.id


def add_embeddings(s: Session, face_id: int, embedder: str, weights_sha256: str, vectors: np.ndarray) -> list[int]:
    """Insert one embedding row per vector (row i gets aug index i); returns their ids in that order."""
    rows = [Embedding(face_id=face_id, embedder=embedder, weights_sha256=weights_sha256, aug_index=aug,
                      dim=int(vec.shape[0]), vector=vector_to_bytes(vec)) for aug, vec in enumerate(vectors)]
    s.add_all(rows)
    s.flush()
    return [r.id for r in rows]


def delete_person(s: Session, person: Person) -> dict[str, list[int]]:
    removed: dict[str, list[int]] = {}
    for photo in list(s.scalars(select(Photo).where(Photo.person_id == person.id))):
        for model, ids in delete_photo(s, photo).items():
            removed.setdefault(model, []).extend(ids)
    s.execute(delete(Person).where(Person.id == person.id))
    s.expunge_all()
    return removed


def weights_in_store(s: Session, embedder: str) -> tuple[str, ...]:
    """Every distinct weights sha256 among ``embedder``'s stored vectors, sorted."""
    stmt = select(Embedding.weights_sha256).where(Embedding.embedder == embedder).distinct()
    return tuple(sorted(s.scalars(stmt)))


def stored_embeddings(s: Session, embedders: Sequence[str]) -> Iterator[tuple[int, str, int, Face, Photo]]:
    """(embedding id, embedder, aug index, face row, photo row) of every stored vector of ``embedders``, ordered
    by embedder, face and aug index (what re-embedding recomputes)."""
    wanted = select(Embedding.face_id).where(Embedding.embedder.in_(embedders))
    faces = {f.id: f for f in s.scalars(select(Face).where(Face.id.in_(wanted)))}
    photos = {p.id: p for p in s.scalars(select(Photo).where(Photo.id.in_({f.photo_id for f in faces.values()})))}
    rows = s.execute(select(Embedding.id, Embedding.embedder, Embedding.face_id, Embedding.aug_index)
                     .where(Embedding.embedder.in_(embedders))
                     .order_by(Embedding.embedder, Embedding.face_id, Embedding.aug_index))
    for emb_id, embedder, face_id, aug in rows:
        face = faces[face_id]
        yield emb_id, embedder, aug, face, photos[face.photo_id]


def delete_embeddings(s: Session, ids: Sequence[int]) -> None:
    for start in range(0, len(ids), MAX_PARAMS):
        s.execute(delete(Embedding).where(Embedding.id.in_([int(i) for i in ids[start : start + MAX_PARAMS]])))


def replace_vectors(s: Session, ids: Sequence[int], vectors: np.ndarray, weights_sha256: str) -> None:
    """Overwrite the vectors (and their weights hash and dim) of the embedding rows ``ids``, in order."""
    dim = int(vectors.shape[1]) if len(vectors) else 0
    for start in range(0, len(ids), MAX_PARAMS):
        part = range(start, min(start + MAX_PARAMS, len(ids)))
        s.execute(update(Embedding), [{"id": int(ids[j]), "vector": vector_to_bytes(vectors[j]),
                                       "weights_sha256": weights_sha256, "dim": dim} for j in part])


def first_face(s: Session, photo_id: int) -> Face | None:
    return s.scalar(select(Face).where(Face.photo_id == photo_id).order_by(Face.id).limit(1))


def photo_of(s: Session, person: str, path: str) -> Photo | None:
    """The stored photo ``path`` of the person named ``person``."""
    return s.scalar(select(Photo).join(Person, Person.id == Photo.person_id)
                    .where(Person.name == person, Photo.path == path))


def people_and_photos(s: Session, embedder: str) -> tuple[int, int]:
    """(people with ``embedder`` vectors, their original crops (``aug_index`` 0)): a gallery's size."""
    row = s.execute(
        select(func.count(func.distinct(Photo.person_id)), func.count(Embedding.id))
        .join(Face, Face.id == Embedding.face_id)
        .join(Photo, Photo.id == Face.photo_id)
        .where(Embedding.embedder == embedder, Embedding.aug_index == 0)
    ).one()
    return int(row[0]), int(row[1])


def original_vectors(s: Session, embedder: str) -> tuple[np.ndarray, np.ndarray]:
    """(person id per row, vectors) of every original crop (``aug_index`` 0) of ``embedder``, in id order."""
    rows = s.execute(
        select(Photo.person_id, Embedding.vector)
        .join(Face, Face.id == Embedding.face_id)
        .join(Photo, Photo.id == Face.photo_id)
        .where(Embedding.embedder == embedder, Embedding.aug_index == 0)
        .order_by(Embedding.id)
    ).all()
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.array([r[0] for r in rows], np.int64), np.stack([bytes_to_vector(r[1]) for r in rows])


def person_names(s: Session, ids: Sequence[int]) -> dict[int, str]:
    """person id -> name for those of ``ids`` that still exist."""
    return dict(s.execute(select(Person.id, Person.name).where(Person.id.in_([int(i) for i in ids]))).all())


def table_counts(s: Session) -> dict[str, int]:
    return {
        "people": s.scalar(select(func.count(Person.id))),
        "photos": s.scalar(select(func.count(Photo.id))),
        "faces": s.scalar(select(func.count(Face.id))),
        "embeddings": s.scalar(select(func.count(Embedding.id))),
    }


def orphan_counts(s: Session) -> dict[str, int]:
    """Rows whose parent or children are missing, by kind (every count 0 in a consistent store)."""
    stmts = {
        "photos without person": select(func.count(Photo.id)).where(~Photo.person_id.in_(select(Person.id))),
        "faces without photo": select(func.count(Face.id)).where(~Face.photo_id.in_(select(Photo.id))),
        "embeddings without face": select(func.count(Embedding.id)).where(~Embedding.face_id.in_(select(Face.id))),
        "photos without face": select(func.count(Photo.id)).where(~Photo.id.in_(select(Face.photo_id))),
        "faces without embedding": select(func.count(Face.id)).where(~Face.id.in_(select(Embedding.face_id))),
    }
    return {what: s.scalar(stmt) or 0 for what, stmt in stmts.items()}


def delete_setting(s: Session, key: str) -> str | None:
    """Delete a setting; returns the value it had (None when there was none)."""
    row = s.get(Setting, key)
    if row is None:
        return None
    s.delete(row)
    s.flush()
    return row.value


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


# -- API keys of the HTTP service ------------------------------------------------------------------------------
def add_api_key(s: Session, name: str, token_sha256: str, prefix: str, scope: str) -> ApiKey:
    key = ApiKey(name=name, token_sha256=token_sha256, prefix=prefix, scope=scope)
    s.add(key)
    s.flush()
    return key


def active_api_key(s: Session, *, name: str | None = None, token_sha256: str | None = None) -> ApiKey | None:
    """The unrevoked key with this name or token hash."""
    stmt = select(ApiKey).where(ApiKey.revoked_at.is_(None))
    stmt = stmt.where(ApiKey.name == name) if name is not None else stmt.where(ApiKey.token_sha256 == token_sha256)
    return s.scalar(stmt)


def api_keys(s: Session) -> list[ApiKey]:
    return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def count_active_api_keys(s: Session) -> int:
    return s.scalar(select(func.count(ApiKey.id)).where(ApiKey.revoked_at.is_(None))) or 0


def revoke_api_key(s: Session, key: ApiKey, when) -> None:
    s.execute(update(ApiKey).where(ApiKey.id == key.id).values(revoked_at=when))


def photo_paths(s: Session, photo_ids: Sequence[int]) -> dict[int, str]:
    """photo id -> stored path for those of ``photo_ids`` that exist."""
    ids = sorted({int(i) for i in photo_ids})
    out: dict[int, str] = {}
    for start in range(0, len(ids), MAX_PARAMS):
        out.update(s.execute(select(Photo.id, Photo.path).where(Photo.id.in_(ids[start : start + MAX_PARAMS]))).all())
    return out


def photos_without_embeddings(s: Session, photo_ids: Sequence[int]) -> list[int]:
    """Those of ``photo_ids`` that no longer have any embedding row."""
    ids = sorted({int(i) for i in photo_ids})
    with_vectors: set[int] = set()
    for start in range(0, len(ids), MAX_PARAMS):
        with_vectors.update(s.scalars(select(Face.photo_id).join(Embedding, Embedding.face_id == Face.id)
                                      .where(Face.photo_id.in_(ids[start : start + MAX_PARAMS])).distinct()))
    return [i for i in ids if i not in with_vectors]


def add_pending_erasure(s: Session, person_id: int) -> None:
    """Record that a deleted person's erasure must still be finished (in the transaction that deletes them)."""
    s.add(PendingErasure(person_id=int(person_id)))
    s.flush()


def pending_erasures(s: Session) -> list[int]:
    """The former person ids of every erasure not finished yet, oldest first."""
    return list(s.scalars(select(PendingErasure.person_id).order_by(PendingErasure.id)))


def clear_pending_erasures(s: Session, person_ids: Sequence[int]) -> None:
    s.execute(delete(PendingErasure).where(PendingErasure.person_id.in_([int(i) for i in person_ids])))


def all_people(s: Session) -> list[Person]:
    return list(s.scalars(select(Person).order_by(Person.id)))
