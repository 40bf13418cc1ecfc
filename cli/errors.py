"""Turning library exceptions into one-line ``Error: ...`` messages with exit code 1."""
from __future__ import annotations

import functools
import logging
import sys

import click

log = logging.getLogger("facegallery")

# Exceptions a user can act on: their message is the whole story.
EXPECTED = ("GalleryError", "ImageLoadError", "WeightsNotFoundError", "WeightsError", "SchemaVersionError")


class CliError(click.ClickException):
    """A one-line error shown as ``Error: <message>``, exit code 1."""

    exit_code = 1


def _expected(exc: BaseException) -> bool:
    return any(cls.__name__ in EXPECTED for cls in type(exc).__mro__)


def _damaged(exc: BaseException) -> bool:
    """A database error that SQLite raises for a damaged file (sqlalchemy.exc.DatabaseError, by name: the CLI
    imports no sqlalchemy)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = str(exc).lower()
    return "DBAPIError" in names and ("malformed" in text or "not a database" in text)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def handle_errors(fn):
    """Decorator for commands: expected errors -> one line; unexpected -> one line unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Abort() from None
        except Exception as exc:
            ctx = click.get_current_context(silent=True)
            debug = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("debug"))
            if _expected(exc):
                raise CliError(first_line(exc)) from exc
            if _damaged(exc):
                raise CliError(f"the gallery database cannot be read ({first_line(getattr(exc, 'orig', exc))}): "
                               f"run facegallery check (see README, 'A damaged database')") from exc
            if debug:
                raise
            log.debug("unexpected error", exc_info=True)
            raise CliError(f"unexpected {type(exc).__name__}: {first_line(exc)} (run with --debug for details)") from exc

    return wrapper


def run_cli(group) -> None:
    group(prog_name="facegallery")
    sys.exit(0)
