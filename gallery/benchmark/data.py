"""Benchmark inputs: a folder-per-person dataset, the seed-style identification split, LFW pairs files."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gallery.enroll.scan import scan_people_dir
from gallery.errors import InvalidInputError
from gallery.results import display


def people_images(root: Path) -> dict[str, list[Path]]:
    """person -> image paths (sorted) for ``root/<person>/<image>``."""
    if not root.is_dir():
        raise InvalidInputError(f"{display(root)}: not a folder (expected one sub-folder per person)")
    jobs, _, _ = scan_people_dir(root)
    out: dict[str, list[Path]] = {}
    for job in jobs:
        out.setdefault(job.person, []).append(Path(job.source))
    return {p: sorted(v) for p, v in sorted(out.items())}


@dataclass(frozen=True)
class IdentSplit:
    """Who is enrolled with which photos, and which photos are genuine or impostor probes."""

    enroll: dict[str, list[Path]]
    queries: list[tuple[str, Path]]
    impostors: list[tuple[str, Path]]
    eligible: int
    notes: list[str] = field(default_factory=list)

    @property
    def people(self) -> list[str]:
        return sorted(self.enroll)

    def to_dict(self) -> dict:
        return {
            "enrolled_people": len(self.enroll), "enroll_images": sum(len(v) for v in self.enroll.values()),
            "genuine_queries": len(self.queries), "impostor_people": len({p for p, _ in self.impostors}),
            "impostor_queries": len(self.impostors), "eligible_people": self.eligible,
        }


def seed_split(people: dict[str, list[Path]], identities: int, per_person: int, impostors: int,
               seed: int) -> IdentSplit:
    """The seed system's protocol: among people with more than ``per_person`` images (sorted by name), a seeded
    draw of ``identities`` enrolled people (``per_person`` images enrolled, the rest are probes) and
    ``impostors`` further people who are never enrolled (all their images are impostor probes)."""
    if identities < 1 or per_person < 1 or impostors < 0:
        raise InvalidInputError("--identities and --enroll-per-person must be >= 1, --impostors >= 0")
    eligible = sorted(p for p, imgs in people.items() if len(imgs) >= per_person + 1)
    if len(eligible) < 2:
        raise InvalidInputError(
            f"the dataset needs at least 2 people with {per_person + 1} or more images (has {len(eligible)})")
    notes = []
    n_enroll = min(identities, len(eligible) - (1 if impostors else 0))
    n_imp = min(impostors, len(eligible) - n_enroll)
    if (n_enroll, n_imp) != (identities, impostors):
        notes.append(f"only {len(eligible)} people have >= {per_person + 1} images: enrolled {n_enroll} people "
                     f"(asked {identities}) and {n_imp} impostor people (asked {impostors})")
    order = np.random.default_rng(seed).permutation(len(eligible))
    enrolled = sorted(eligible[i] for i in order[:n_enroll])
    impostor_people = sorted(eligible[i] for i in order[n_enroll:n_enroll + n_imp])
    enroll, queries = {}, []
    for person in enrolled:
        rng = np.random.default_rng([seed, zlib.crc32(person.encode("utf-8"))])
        imgs = [people[person][i] for i in rng.permutation(len(people[person]))]
        enroll[person] = sorted(imgs[:per_person])
        queries += [(person, p) for p in sorted(imgs[per_person:])]
    imps = [(person, p) for person in impostor_people for p in people[person]]
    return IdentSplit(enroll, queries, imps, len(eligible), notes)


@dataclass(frozen=True)
class Pairs:
    """Verification pairs (image paths relative to the dataset folder) with their same/different label and fold."""

    left: list[str]
    right: list[str]
    same: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.left)

    @property
    def images(self) -> list[str]:
        return sorted(set(self.left) | set(self.right))


def _image(name: str, number: str) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


VIEW1_FOLDS = 10  # a View 1 file has no folds: its pairs are dealt into this many for the k-fold accuracy


def read_pairs(path: Path, root: Path) -> Pairs:
    """Parse an LFW pairs file and check that every image exists under ``root``: View 2 (``pairs.txt``: header
    ``folds n``, then per fold n same and n different pairs) or View 1 (``pairsDevTrain.txt`` /
    ``pairsDevTest.txt``: header ``n``, then n same and n different pairs, dealt into ``VIEW1_FOLDS`` folds)."""
    try:
        lines = [ln.split() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{display(path)}: cannot read pairs file ({exc})") from exc
    if not lines or len(lines[0]) not in (1, 2) or not all(v.isdigit() for v in lines[0]):
        raise InvalidInputError(f"{display(path)}: first line must be '<folds> <pairs per side>' (LFW View 2) "
                                f"or '<pairs per side>' (LFW View 1)")
    body = lines[1:]
    if len(lines[0]) == 1:
        n = int(lines[0][0])
        if n < VIEW1_FOLDS or len(body) != 2 * n:
            raise InvalidInputError(f"{display(path)}: View 1 header says {n} same + {n} different pairs (at "
                                    f"least {VIEW1_FOLDS}), found {len(body)} pair lines")
        fold = np.tile(np.arange(n) % VIEW1_FOLDS, 2)
    else:
        folds, n = int(lines[0][0]), int(lines[0][1])
        if folds < 2 or n < 1 or len(body) != folds * 2 * n:
            raise InvalidInputError(f"{display(path)}: header says {folds} folds x 2 x {n} pairs (at least 2 "
                                    f"folds), found {len(body)} pair lines")
        fold = np.repeat(np.arange(folds), 2 * n)
    left, right, same = [], [], []
    for i, parts in enumerate(body):
        if len(parts) == 3:
            left.append(_image(parts[0], parts[1]))
            right.append(_image(parts[0], parts[2]))
            same.append(True)
        elif len(parts) == 4:
            left.append(_image(parts[0], parts[1]))
            right.append(_image(parts[2], parts[3]))
            same.append(False)
        else:
            raise InvalidInputError(f"{display(path)}: line {i + 2}: expected 3 or 4 fields, got {len(parts)}")
    missing = [p for p in sorted(set(left) | set(right)) if not (root / p).is_file()]
    if missing:
        raise InvalidInputError(f"{len(missing)} pair image(s) missing under {display(root)}, e.g. {missing[0]}")
    return Pairs(left, right, np.array(same, bool), fold)
