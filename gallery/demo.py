"""The demo: enroll the bundled sample into a local SQLite + FAISS gallery and identify photos with it."""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from PIL import Image

from gallery.enroll.enroll import EnrollReport, enroll_folder
from gallery.recognize.identify import IdentifyReport, identify
from gallery.store import Gallery

log = logging.getLogger(__name__)

GROUP_MEMBERS = ("Serena_Williams_0010.jpg", "Kate_Winslet_0001.jpg", "Tony_Blair_0010.jpg")


@dataclass(frozen=True)
class DemoReport:
    gallery_dir: str
    enroll: EnrollReport
    identify: IdentifyReport

    def to_dict(self) -> dict:
        return {"gallery_dir": self.gallery_dir, "enroll": self.enroll.to_dict(), "identify": self.identify.to_dict()}


def demo_data_dir() -> Path:
    return Path(str(resources.files("gallery") / "demo_data"))


def make_group_photo(query_dir: Path, out: Path) -> Path:
    """Three LFW photos side by side: two enrolled people and one stranger in one picture."""
    tiles = [Image.open(query_dir / name).convert("RGB") for name in GROUP_MEMBERS]
    w, h = sum(t.width for t in tiles), max(t.height for t in tiles)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, 0))
        x += t.width
    canvas.save(out, quality=95)
    return out


def run_demo(gallery: Gallery, *, models=None, augment: int = 2, annotate_dir: Path | None = None) -> DemoReport:
    data = demo_data_dir()
    enrolled = enroll_folder(gallery, data / "people", models=models, augment=augment)
    work = gallery.settings.home / "demo-queries"
    work.mkdir(parents=True, exist_ok=True)
    queries = sorted((data / "query").glob("*.jpg"))
    copies = [Path(shutil.copy(q, work / q.name)) for q in queries]
    group = make_group_photo(data / "query", work / "group_photo.jpg")
    report = identify(gallery, [*copies, group], models=list(enrolled.models), annotate_dir=annotate_dir)
    return DemoReport(str(gallery.settings.home), enrolled, report)
