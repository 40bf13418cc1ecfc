"""The ``facegallery`` command: click options in, one ``gallery`` call, a table or JSON out.

Errors the library raises on purpose become ``Error: <message>`` on stderr and exit code 1; usage errors are
click's exit code 2. ``--debug`` shows the traceback of an unexpected error instead of one line.
"""
from __future__ import annotations

import gc
import logging
import math
import sys
from pathlib import Path

import click

from gallery.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MODELS,
    DLIB_ENGINES,
    RANDOM_INIT_MODELS,
    Settings,
)

MODEL_CHOICES = click.Choice(DEFAULT_MODELS)


class CosineThreshold(click.ParamType):
    """A cosine-similarity threshold: a finite number in [-1, 1]; nan, inf and anything outside are usage errors."""

    name = "threshold"

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v) or not -1.0 <= v <= 1.0:
            self.fail(f"{value!r} is not a cosine threshold: give a number from -1 to 1", param, ctx)
        return v


THRESHOLD = CosineThreshold()
log = logging.getLogger("facegallery")


def _parse_weights(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        if v == "random":
            out.update(dict.fromkeys(RANDOM_INIT_MODELS, "random"))
        elif "=" in v:
            model, _, where = v.partition("=")
            out[model.strip()] = where.strip()
        else:
            raise click.BadParameter(f"{v!r}: use MODEL=FILE, MODEL=random or random", param_hint="--weights")
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--gallery", "home", type=click.Path(file_okay=False, path_type=Path), envvar="FACEGALLERY_HOME",
              help="Gallery folder (SQLite file, FAISS indexes, heads). Env FACEGALLERY_HOME; default ~/.facegallery.")
@click.option("--db-url", envvar="FACEGALLERY_DB_URL", help="Any SQLAlchemy URL instead of the gallery's SQLite file.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--weights-dir", type=click.Path(file_okay=False, path_type=Path), envvar="FACEGALLERY_WEIGHTS",
              help="Folder of imported weights (env FACEGALLERY_WEIGHTS).")
@click.option("--weights", "weights", multiple=True, metavar="MODEL=FILE|random",
              help="Explicit weights file per model; 'random' = random weights (development and tests only).")
@click.option("--fast", is_flag=True, help="Opt-in faster inference: ONNX Runtime on a CPU (extra 'fast'), bf16 on a GPU; see README.")
@click.option("--dlib-engine", type=click.Choice(DLIB_ENGINES), default=None, envvar="FACEGALLERY_DLIB_ENGINE",
              help="Run dlib's network in PyTorch (torch, default: batched, same vectors) or dlib-bin (dlib).")
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=None, envvar="FACEGALLERY_LOCK_TIMEOUT",
              metavar="SECONDS", help="How long a writer waits for another writer before 'gallery is busy' "
              "(env FACEGALLERY_LOCK_TIMEOUT; default 600).")
@click.option("--vectors", envvar="FACEGALLERY_VECTORS", default=None, metavar="faiss|milvus://HOST:PORT|PATH.db",
              help="Where the vector caches live: FAISS files (default), a Milvus server, or a Milvus Lite file "
                   "(extra 'milvus'). Env FACEGALLERY_VECTORS.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors.")
@click.pass_context
def cli(ctx, home, db_url, device, batch_size, weights_dir, weights, fast, dlib_engine, lock_timeout, vectors, quiet,
        verbose, debug):
    """facegallery: enroll people from folders, identify faces in photos, benchmark embedders."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    kwargs = dict(db_url=db_url, device=device, batch_size=batch_size, weights_dir=weights_dir,
                  weights=_parse_weights(weights), progress=not quiet, fast=fast, dlib_engine=dlib_engine,
                  vectors=vectors)
    if home is not None:
        kwargs["home"] = home
    if lock_timeout is not None:
        kwargs["lock_timeout_s"] = lock_timeout
    ctx.obj = {"settings_kwargs": kwargs, "debug": debug}


def settings_of(ctx) -> Settings:
    return Settings(**ctx.find_root().obj["settings_kwargs"])


def open_gallery(ctx, **overrides):
    """The gallery of the global options, never created here: where none exists, reading commands say "no
    gallery at DIR" and enroll (or init) makes one."""
    from gallery.store import Gallery

    return Gallery(settings_of(ctx).with_(**overrides) if overrides else settings_of(ctx), create=False)


def main() -> None:
    from cli.errors import run_cli

    try:
        run_cli(cli)
    finally:
        # Interpreter shutdown would garbage-collect the ~400K objects torch, torchvision and the rest leave behind:
        # about 1 s of a one-photo identify (benchmarks/startup.py). Every command has closed its gallery by now;
        # frozen objects are simply released with the process.
        gc.freeze()


# Commands register themselves on import.
from cli import commands_core, commands_library, commands_more, commands_serve, commands_store  # noqa: E402,F401
