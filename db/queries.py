"""Query helpers over the store. Every function takes a Session and never commits: the caller owns transactions."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from db.models import (
    ApiKey,
    Embedding,
    Face,
    IndexState,
    LibraryEmbedding,
    LibraryFace,
    LibraryPhoto,
    PendingErasure,
    Person,
    Photo,
    Setting,
)

MAX_PARAMS = 900  # bound parameters per statement: under SQLite's limit


LIBRARY_PREFIX = "library_"


def library_key(embedder: str) -> str:
    """The vector-set key of ``embedder``'s library vectors: their index, generation and cache file name."""
    return LIBRARY_PREFIX + embedder


def _vector_table(key: str) -> tuple[type, str]:
    """The table and embedder name behind a vector-set key: ``dlib`` (enrolled) or ``library_dlib``."""
    if key.startswith(LIBRARY_PREFIX):
        return LibraryEmbedding, key[len(LIBRARY_PREFIX):]
    return Embedding, key


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
    """sha256 of the weights that made the embedder's stored vectors (None when it holds none). ``embedder`` may
    be a library key (:func:`library_key`), as in every function that takes a vector-set key."""
    table, name = _vector_table(embedder)
    return s.scalar(select(table.weights_sha256).where(table.embedder == name).limit(1))


def embedders_in_store(s: Session) -> list[str]:
    return sorted(s.scalars(select(Embedding.embedder).distinct()))


def count_embeddings(s: Session, embedder: str) -> int:
    table, name = _vector_table(embedder)
    return s.scalar(select(func.count(table.id)).where(table.embedder == name)) or 0


def iter_vectors(s: Session, embedder: str, chunk: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (ids int64, vectors float32) for every stored vector of ``embedder`` in id order, chunk by chunk."""
    for rows in iter_vector_rows(s, embedder, chunk):
        yield (np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
               np.stack([bytes_to_vector(r[1]) for r in rows]))


def iter_vector_rows(s: Session, embedder: str, chunk: int = 20_000) -> Iterator[list[tuple[int, bytes]]]:
    """Yield the raw ``(id, vector bytes)`` rows of ``embedder`` in id order, chunk by chunk, decoding nothing
    (a damaged row is the caller's to judge, not an exception here)."""
    table, name = _vector_table(embedder)
    last = 0
    while True:
        rows = s.execute(
            select(table.id, table.vector)
            .where(table.embedder == name, table.id > last)
            .order_by(table.id)
            .limit(chunk)
        ).all()
        if not rows:
            return
        yield [(int(r[0]), r[1]) for r in rows]
        last = int(rows[-1][0])


def vector_dim(s: Session, embedder: str) -> int | None:
    """The dimension most of ``embedder``'s stored vectors have (from their byte length); None when it has none."""
    table, name = _vector_table(embedder)
    length = func.length(table.vector)
    row = s.execute(select(length, func.count(table.id)).where(table.embedder == name)
                    .group_by(length).order_by(func.count(table.id).desc()).limit(1)).first()
    return None if row is None else int(row[0]) // 4


def embedding_ids(s: Session, embedder: str, person_id: int | None = None) -> np.ndarray:
    if person_id is None:  # any vector set, a library key included
        table, name = _vector_table(embedder)
        return np.array(list(s.scalars(select(table.id).where(table.embedder == name))), dtype=np.int64)
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
    """Every distinct weights sha256 among ``embedder``'s stored vectors (a vector-set key), sorted."""
    table, name = _vector_table(embedder)
    stmt = select(table.weights_sha256).where(table.embedder == name).distinct()
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


def delete_embeddings(s: Session, ids: Sequence[int], key: str = "") -> None:
    """Delete vectors by id (``key``: a library key deletes library vectors)."""
    table = _vector_table(key)[0]
    for start in range(0, len(ids), MAX_PARAMS):
        s.execute(delete(table).where(table.id.in_([int(i) for i in ids[start : start + MAX_PARAMS]])))


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


# -- the scanned photo library (facegallery scan / clusters / name / find) ------------------------------------
def library_photo_at(s: Session, path: str) -> LibraryPhoto | None:
    return s.scalar(select(LibraryPhoto).where(LibraryPhoto.path == path))


def library_paths(s: Session) -> dict[str, int]:
    """path -> id of every library photo."""
    return {p: int(i) for i, p in s.execute(select(LibraryPhoto.id, LibraryPhoto.path))}


def library_faces_of_photo(s: Session, photo_id: int) -> list[LibraryFace]:
    return list(s.scalars(select(LibraryFace).where(LibraryFace.photo_id == photo_id).order_by(LibraryFace.id)))


def library_embedded_models(s: Session, photo_id: int) -> set[str]:
    """The embedders every face of the library photo has a vector of (none when it has no face)."""
    faces = select(LibraryFace.id).where(LibraryFace.photo_id == photo_id)
    n_faces = s.scalar(select(func.count()).select_from(faces.subquery())) or 0
    stmt = (select(LibraryEmbedding.embedder, func.count(LibraryEmbedding.id))
            .where(LibraryEmbedding.face_id.in_(faces)).group_by(LibraryEmbedding.embedder))
    return {m for m, n in s.execute(stmt) if n == n_faces}


def add_library_photo(s: Session, *, root: str, path: str, sha256: str, size_bytes: int, width: int, height: int,
                      faces_detected: int) -> int:
    photo = LibraryPhoto(root=root, path=path, sha256=sha256, size_bytes=size_bytes, width=width, height=height,
                         faces_detected=faces_detected)
    s.add(photo)
    s.flush()
    return photo.id


def add_library_face(s: Session, photo_id: int, box, prob: float, landmarks) -> int:
    face = LibraryFace(photo_id=photo_id, x1=box[0], y1=box[1], x2=box[2], y2=box[3], prob=prob,
                       landmarks=[list(p) for p in landmarks] if landmarks else None)
    s.add(face)
    s.flush()
    return face.id


def add_library_embeddings(s: Session, embedder: str, weights_sha256: str, face_ids: Sequence[int],
                           vectors: np.ndarray) -> list[int]:
    """One library vector per face (row i for face_ids[i]); returns their ids in that order."""
    rows = [LibraryEmbedding(face_id=int(f), embedder=embedder, weights_sha256=weights_sha256,
                             dim=int(v.shape[0]), vector=vector_to_bytes(v)) for f, v in zip(face_ids, vectors)]
    s.add_all(rows)
    s.flush()
    return [r.id for r in rows]


def _library_removed(s: Session, face_filter) -> dict[str, list[int]]:
    removed: dict[str, list[int]] = {}
    stmt = select(LibraryEmbedding.id, LibraryEmbedding.embedder).where(LibraryEmbedding.face_id.in_(face_filter))
    for emb_id, model in s.execute(stmt):
        removed.setdefault(library_key(model), []).append(int(emb_id))
    return removed


def delete_library_photos(s: Session, photo_ids: Sequence[int]) -> dict[str, list[int]]:
    """Delete library photos with their faces and vectors; returns the removed vector ids per library key."""
    removed: dict[str, list[int]] = {}
    for start in range(0, len(photo_ids), MAX_PARAMS):
        part = [int(i) for i in photo_ids[start : start + MAX_PARAMS]]
        faces = select(LibraryFace.id).where(LibraryFace.photo_id.in_(part))
        for key, ids in _library_removed(s, faces).items():
            removed.setdefault(key, []).extend(ids)
        s.execute(delete(LibraryEmbedding).where(LibraryEmbedding.face_id.in_(faces)))
        s.execute(delete(LibraryFace).where(LibraryFace.photo_id.in_(part)))
        s.execute(delete(LibraryPhoto).where(LibraryPhoto.id.in_(part)))
    return removed


def delete_library_faces(s: Session, face_ids: Sequence[int]) -> dict[str, list[int]]:
    """Delete library faces and their vectors (their photos stay: a re-scan of an unchanged photo adds nothing)."""
    removed: dict[str, list[int]] = {}
    for start in range(0, len(face_ids), MAX_PARAMS):
        part = [int(i) for i in face_ids[start : start + MAX_PARAMS]]
        for key, ids in _library_removed(s, part).items():
            removed.setdefault(key, []).extend(ids)
        s.execute(delete(LibraryEmbedding).where(LibraryEmbedding.face_id.in_(part)))
        s.execute(delete(LibraryFace).where(LibraryFace.id.in_(part)))
    return removed


def library_faces_of_people(s: Session, person_id: int) -> list[int]:
    """Ids of the library faces assigned to or suggested for the person."""
    stmt = select(LibraryFace.id).where((LibraryFace.person_id == person_id)
                                        | (LibraryFace.suggested_person_id == person_id))
    return [int(i) for i in s.scalars(stmt)]


def library_vectors(s: Session, embedder: str, *, unassigned_only: bool = False
                    ) -> tuple[np.ndarray, list[tuple[int, bytes]]]:
    """(face ids, raw ``(face id, vector bytes)`` rows) of the library faces' ``embedder`` vectors, by face id."""
    stmt = (select(LibraryEmbedding.face_id, LibraryEmbedding.vector)
            .where(LibraryEmbedding.embedder == embedder).order_by(LibraryEmbedding.face_id))
    if unassigned_only:
        stmt = stmt.join(LibraryFace, LibraryFace.id == LibraryEmbedding.face_id).where(LibraryFace.person_id.is_(None))
    rows = [(int(f), v) for f, v in s.execute(stmt)]
    return np.array([r[0] for r in rows], np.int64), rows


def library_vectors_of_faces(s: Session, face_ids: Sequence[int]) -> dict[int, dict[str, tuple[str, bytes]]]:
    """face id -> {embedder: (weights sha256, vector bytes)}."""
    out: dict[int, dict[str, tuple[str, bytes]]] = {}
    for start in range(0, len(face_ids), MAX_PARAMS):
        part = [int(i) for i in face_ids[start : start + MAX_PARAMS]]
        stmt = select(LibraryEmbedding.face_id, LibraryEmbedding.embedder, LibraryEmbedding.weights_sha256,
                      LibraryEmbedding.vector).where(LibraryEmbedding.face_id.in_(part))
        for f, m, sha, v in s.execute(stmt):
            out.setdefault(int(f), {})[m] = (sha, v)
    return out


def library_face_ids_of_vectors(s: Session, embedder: str, ids: Sequence[int]) -> dict[int, int]:
    """library vector id -> its face id."""
    out: dict[int, int] = {}
    for start in range(0, len(ids), MAX_PARAMS):
        part = [int(i) for i in ids[start : start + MAX_PARAMS]]
        stmt = select(LibraryEmbedding.id, LibraryEmbedding.face_id).where(
            LibraryEmbedding.id.in_(part), LibraryEmbedding.embedder == embedder)
        out.update({int(i): int(f) for i, f in s.execute(stmt)})
    return out


def library_faces(s: Session, face_ids: Sequence[int]) -> dict[int, tuple[LibraryFace, LibraryPhoto]]:
    """face id -> (face row, photo row)."""
    out: dict[int, tuple[LibraryFace, LibraryPhoto]] = {}
    for start in range(0, len(face_ids), MAX_PARAMS):
        part = [int(i) for i in face_ids[start : start + MAX_PARAMS]]
        stmt = select(LibraryFace, LibraryPhoto).join(LibraryPhoto, LibraryPhoto.id == LibraryFace.photo_id).where(
            LibraryFace.id.in_(part))
        out.update({f.id: (f, p) for f, p in s.execute(stmt)})
    return out


def library_faces_where(s: Session, *, person_id: int | None = None, cluster_id: int | None = None,
                        clustered: bool = False) -> list[tuple[LibraryFace, LibraryPhoto]]:
    """Library faces (with their photos) assigned to ``person_id``, or in ``cluster_id``, or in any cluster."""
    stmt = select(LibraryFace, LibraryPhoto).join(LibraryPhoto, LibraryPhoto.id == LibraryFace.photo_id)
    if person_id is not None:
        stmt = stmt.where(LibraryFace.person_id == person_id)
    if cluster_id is not None:
        stmt = stmt.where(LibraryFace.cluster_id == cluster_id)
    if clustered:
        stmt = stmt.where(LibraryFace.cluster_id.is_not(None))
    return [tuple(r) for r in s.execute(stmt.order_by(LibraryFace.id))]


def set_library_faces(s: Session, face_ids: Sequence[int], **values) -> None:
    """Set columns (person_id, suggested_person_id, suggested_score, cluster_id) of the given library faces."""
    for start in range(0, len(face_ids), MAX_PARAMS):
        part = [int(i) for i in face_ids[start : start + MAX_PARAMS]]
        s.execute(update(LibraryFace).where(LibraryFace.id.in_(part)).values(**values))


def set_suggestions(s: Session, rows: Sequence[tuple[int, int | None, float | None]]) -> None:
    """(face id, suggested person id or None, score) for each face."""
    if rows:
        s.execute(update(LibraryFace), [{"id": int(f), "suggested_person_id": p, "suggested_score": sc}
                                        for f, p, sc in rows])


def set_clusters(s: Session, assignment: dict[int, int]) -> None:
    """Give these unassigned faces their cluster ids and take every other face out of its cluster."""
    s.execute(update(LibraryFace).where(LibraryFace.cluster_id.is_not(None)).values(cluster_id=None))
    if assignment:
        s.execute(update(LibraryFace), [{"id": int(f), "cluster_id": int(c)} for f, c in assignment.items()])


def cluster_of_faces(s: Session) -> dict[int, int]:
    """face id -> cluster id of every clustered library face."""
    stmt = select(LibraryFace.id, LibraryFace.cluster_id).where(LibraryFace.cluster_id.is_not(None))
    return {int(f): int(c) for f, c in s.execute(stmt)}


def enrolled_faces_by_sha(s: Session, shas: Sequence[str]) -> dict[str, list[tuple[int, tuple]]]:
    """sha256 -> [(person id, enrolled face box)] of the enrolled photos with that content."""
    out: dict[str, list[tuple[int, tuple]]] = {}
    for start in range(0, len(shas), MAX_PARAMS):
        part = list(shas[start : start + MAX_PARAMS])
        stmt = (select(Photo.sha256, Photo.person_id, Face.x1, Face.y1, Face.x2, Face.y2)
                .join(Face, Face.photo_id == Photo.id).where(Photo.sha256.in_(part)))
        for sha, pid, x1, y1, x2, y2 in s.execute(stmt):
            out.setdefault(sha, []).append((int(pid), (x1, y1, x2, y2)))
    return out


def library_counts(s: Session) -> dict[str, int]:
    """Photos, faces, assigned, suggested (unassigned with a suggestion), clustered and unassigned faces."""
    faces = func.count(LibraryFace.id)
    return {
        "photos": s.scalar(select(func.count(LibraryPhoto.id))) or 0,
        "faces": s.scalar(select(faces)) or 0,
        "assigned": s.scalar(select(faces).where(LibraryFace.person_id.is_not(None))) or 0,
        "suggested": s.scalar(select(faces).where(LibraryFace.person_id.is_(None),
                                                  LibraryFace.suggested_person_id.is_not(None))) or 0,
        "clustered": s.scalar(select(faces).where(LibraryFace.cluster_id.is_not(None))) or 0,
        "unassigned": s.scalar(select(faces).where(LibraryFace.person_id.is_(None))) or 0,
    }


def library_counts_by_person(s: Session) -> dict[int, tuple[int, int]]:
    """person id -> (library faces assigned to them, unassigned faces suggested for them)."""
    assigned = dict(s.execute(select(LibraryFace.person_id, func.count(LibraryFace.id))
                              .where(LibraryFace.person_id.is_not(None)).group_by(LibraryFace.person_id)).all())
    suggested = dict(s.execute(select(LibraryFace.suggested_person_id, func.count(LibraryFace.id))
                               .where(LibraryFace.person_id.is_(None), LibraryFace.suggested_person_id.is_not(None))
                               .group_by(LibraryFace.suggested_person_id)).all())
    return {int(p): (assigned.get(p, 0), suggested.get(p, 0)) for p in set(assigned) | set(suggested)}


def library_orphan_counts(s: Session) -> dict[str, int]:
    """Library rows whose parent or vectors are missing (every count 0 in a consistent store)."""
    stmts = {
        "library faces without photo": select(func.count(LibraryFace.id)).where(
            ~LibraryFace.photo_id.in_(select(LibraryPhoto.id))),
        "library vectors without face": select(func.count(LibraryEmbedding.id)).where(
            ~LibraryEmbedding.face_id.in_(select(LibraryFace.id))),
        "library faces without vector": select(func.count(LibraryFace.id)).where(
            ~LibraryFace.id.in_(select(LibraryEmbedding.face_id))),
    }
    return {what: s.scalar(stmt) or 0 for what, stmt in stmts.items()}


def library_models(s: Session) -> list[str]:
    """The embedders the library holds vectors of. One index probe per embedder (``MIN(embedder) > last`` on
    ix_library_embeddings_embedder_id): a ``DISTINCT`` read every row, ~6 ms per ``find`` at 100K faces."""
    found: list[str] = []
    while True:
        stmt = select(func.min(LibraryEmbedding.embedder))
        if found:
            stmt = stmt.where(LibraryEmbedding.embedder > found[-1])
        name = s.scalar(stmt)
        if name is None:
            return found
        found.append(name)


def reference_overlaps(s: Session) -> list[tuple[int, int, tuple, int, tuple]]:
    """(library face id, library photo id, its box, person id, enrolled face box) for every unassigned library
    face in a photo whose bytes are also an enrolled reference photo."""
    stmt = (select(LibraryFace.id, LibraryFace.photo_id, LibraryFace.x1, LibraryFace.y1, LibraryFace.x2,
                   LibraryFace.y2, Photo.person_id, Face.x1, Face.y1, Face.x2, Face.y2)
            .join(LibraryPhoto, LibraryPhoto.id == LibraryFace.photo_id)
            .join(Photo, Photo.sha256 == LibraryPhoto.sha256)
            .join(Face, Face.photo_id == Photo.id)
            .where(LibraryFace.person_id.is_(None)))
    return [(int(r[0]), int(r[1]), tuple(r[2:6]), int(r[6]), tuple(r[7:11])) for r in s.execute(stmt)]


def current_suggestions(s: Session) -> dict[int, tuple[int | None, float | None]]:
    """face id -> (suggested person id, score) of every unassigned library face."""
    stmt = select(LibraryFace.id, LibraryFace.suggested_person_id, LibraryFace.suggested_score).where(
        LibraryFace.person_id.is_(None))
    return {int(f): (p, sc) for f, p, sc in s.execute(stmt)}


def delete_library_vectors(s: Session, embedder: str) -> list[int]:
    """Delete every library vector of ``embedder`` (made with other weights); returns their ids."""
    ids = [int(i) for i in s.scalars(select(LibraryEmbedding.id).where(LibraryEmbedding.embedder == embedder))]
    s.execute(delete(LibraryEmbedding).where(LibraryEmbedding.embedder == embedder))
    return ids


def enrolled_copies(s: Session, person_id: int, sha256: str) -> list[tuple[Photo, tuple]]:
    """The person's enrolled photos with these bytes and their face boxes."""
    stmt = (select(Photo, Face.x1, Face.y1, Face.x2, Face.y2).join(Face, Face.photo_id == Photo.id)
            .where(Photo.person_id == person_id, Photo.sha256 == sha256))
    return [(p, (x1, y1, x2, y2)) for p, x1, y1, x2, y2 in s.execute(stmt)]
