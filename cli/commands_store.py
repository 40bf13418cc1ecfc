"""Commands that look after the database itself: init, backup, restore, salvage."""
from __future__ import annotations

from pathlib import Path

import click

from cli import render
from cli.errors import handle_errors
from cli.main import cli, open_gallery, settings_of

json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")


def _copy_text(rep) -> str:
    counts = ", ".join(f"{k}={v}" for k, v in rep.counts.items())
    lines = [f"{rep.action}: {rep.path} ({counts}; {rep.method})"]
    return "\n".join(lines + [f"note: {n}" for n in rep.notes])


@cli.command()
@click.option("--force", is_flag=True, help="Start an empty gallery even where index files, heads or the lock "
              "show that a database was lost (those files are deleted).")
@json_option
@click.pass_context
@handle_errors
def init(ctx, force, as_json):
    """Create an empty gallery (enroll also creates one)."""
    from gallery.manage.backup import init_gallery

    rep = init_gallery(settings_of(ctx), force=force)
    if as_json:
        return render.emit_json(rep.to_dict())
    click.echo(f"{'Created' if rep.created else 'A gallery already exists at'} {rep.home}"
               + (f"; deleted {', '.join(rep.removed)}" if rep.removed else ""))


@cli.command()
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace DEST when it exists.")
@json_option
@click.pass_context
@handle_errors
def backup(ctx, dest, force, as_json):
    """Copy the gallery's database into DEST (safe while the gallery is in use)."""
    from gallery.manage.backup import backup as do_backup

    with open_gallery(ctx) as g:
        _emit(do_backup(g, dest, force=force), as_json)


def _emit(rep, as_json: bool) -> None:
    render.emit_json(rep.to_dict()) if as_json else click.echo(_copy_text(rep))


@cli.command()
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace a gallery that holds people or cannot be read.")
@json_option
@click.pass_context
@handle_errors
def restore(ctx, src, force, as_json):
    """Replace the gallery's database with the backup SRC; index files are rebuilt, heads must be retrained."""
    from gallery.manage.backup import restore as do_restore

    _emit(do_restore(settings_of(ctx), src, force=force), as_json)


@cli.command()
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace DEST when it exists.")
@json_option
@click.pass_context
@handle_errors
def salvage(ctx, dest, force, as_json):
    """Write what can still be read of a damaged database into the new file DEST (then: restore DEST --force)."""
    from gallery.manage.backup import salvage as do_salvage

    _emit(do_salvage(settings_of(ctx), dest, force=force), as_json)
