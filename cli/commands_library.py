"""Photo-library commands: scan, clusters, name, unassign, move, find."""
from __future__ import annotations

from pathlib import Path

import click

from cli import render
from cli.errors import handle_errors
from cli.main import MODEL_CHOICES, THRESHOLD, cli, open_gallery

json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
model_option = click.option("--model", "-m", type=MODEL_CHOICES, default=None,
                            help="Embedder whose library vectors to use (default: dlib when scanned, else the first).")
RANDOM_NOTE = "NOTE: computed with RANDOM-INIT weights: not a real answer"


@cli.command()
@click.argument("library_dir", type=click.Path(path_type=Path))
@click.option("--model", "-m", "models", multiple=True, type=MODEL_CHOICES,
              help="Embedder(s) to index with (repeatable). Default: every one available.")
@click.option("--follow-symlinks", is_flag=True, help="Also scan symbolic links that lead out of LIBRARY_DIR.")
@json_option
@click.pass_context
@handle_errors
def scan(ctx, library_dir, models, follow_symlinks, as_json):
    """Index every face of every photo under LIBRARY_DIR (any folder tree). Incremental: unchanged photos are
    skipped, changed ones replaced, deleted ones removed; a killed scan goes on where it stopped."""
    from gallery.library.scan import scan_library

    with open_gallery(ctx) as g:
        rep = scan_library(g, library_dir, models=models or None, follow_symlinks=follow_symlinks)
    if as_json:
        return render.emit_json(rep.to_dict())
    click.echo(f"scanned {len(rep.scanned)} photo(s) ({rep.faces_added} new faces, "
               f"{rep.photos_without_face} without a face), {rep.unchanged} unchanged, {len(rep.removed)} removed; "
               f"models: {', '.join(rep.models)}")
    if rep.from_references or rep.suggested:
        click.echo(f"{rep.from_references} face(s) assigned from enrolled reference photos; "
                   f"{rep.suggested} unassigned face(s) suggested for an enrolled person")
    for m, why in rep.models_skipped.items():
        click.echo(f"model {m} skipped: {why}")
    for s in rep.skipped:
        click.echo(f"skipped: {s.path}: {s.reason}")
    if rep.random_weights:
        click.echo(f"{RANDOM_NOTE} ({', '.join(rep.random_weights)})")


@cli.command()
@model_option
@click.option("--min-size", type=click.IntRange(1), default=2, show_default=True, help="Smallest cluster listed.")
@click.option("--method", default=None, help="Clustering method (default: the measured best; see README).")
@click.option("--sheet", "sheet_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write a contact sheet PNG per listed cluster into this folder.")
@click.option("--no-update", is_flag=True, help="List the stored clusters without clustering again.")
@json_option
@click.pass_context
@handle_errors
def clusters(ctx, model, min_size, method, sheet_dir, no_update, as_json):
    """Group the library faces nobody is assigned to. Cluster ids stay put across runs: new photos join the
    clusters you have seen."""
    from gallery.library.clusters import list_clusters, update_clusters

    with open_gallery(ctx) as g:
        updated = None if no_update else update_clusters(g, model=model, method=method)
        rep = list_clusters(g, min_size=min_size, sheet_dir=sheet_dir)
    if as_json:
        doc = rep.to_dict()
        if updated is not None:
            doc.update(kept_ids=updated.kept_ids, new_ids=updated.new_ids, seconds=round(updated.seconds, 3),
                       random_weights=updated.random_weights)
        return render.emit_json(doc)
    click.echo(render.table(["cluster", "faces", "suggested"] + (["sheet"] if sheet_dir else []),
                            [[c.id, c.size, f"{c.suggested} ({c.suggested_faces})" if c.suggested else ""]
                             + ([c.sheet] if sheet_dir else []) for c in rep.clusters]))
    click.echo(f"{len(rep.clusters)} cluster(s) of >= {min_size} faces; {rep.unassigned} unassigned face(s), "
               f"{rep.unclustered} in no cluster" + (f"; clustered in {updated.seconds:.1f} s with {updated.method} "
                                                      f"on {updated.model}" if updated else ""))
    if updated is not None and updated.random_weights:
        click.echo(RANDOM_NOTE)


@cli.command()
@click.argument("cluster", type=int)
@click.argument("name")
@json_option
@click.pass_context
@handle_errors
def name(ctx, cluster, name, as_json):
    """Assign every face of CLUSTER to NAME (new or existing person): they become enrolled vectors."""
    from gallery.library.naming import name_cluster

    with open_gallery(ctx) as g:
        rep = name_cluster(g, cluster, name)
    _assigned(rep, as_json)


@cli.command()
@click.argument("face_id", type=int)
@click.argument("name")
@json_option
@click.pass_context
@handle_errors
def move(ctx, face_id, name, as_json):
    """Assign library face FACE_ID to NAME instead of whoever had it."""
    from gallery.library.naming import move_face

    with open_gallery(ctx) as g:
        rep = move_face(g, face_id, name)
    _assigned(rep, as_json)


def _assigned(rep, as_json: bool) -> None:
    if as_json:
        return render.emit_json(rep.to_dict())
    click.echo(f"{len(rep.faces)} face(s) assigned to {rep.person}" + (" (new person)" if rep.new_person else "")
               + f": {rep.enrolled} enrolled, {rep.already_enrolled} already a reference photo")
    for face_id, before in rep.moved_from.items():
        click.echo(f"face {face_id} moved from {before}")
    for note in rep.notes:
        click.echo(f"note: {note}")


@cli.command()
@click.argument("face_id", type=int)
@json_option
@click.pass_context
@handle_errors
def unassign(ctx, face_id, as_json):
    """Take library face FACE_ID from its person (its enrolled copy is deleted)."""
    from gallery.library.naming import unassign_face

    with open_gallery(ctx) as g:
        rep = unassign_face(g, face_id)
    if as_json:
        return render.emit_json(rep.to_dict())
    click.echo(f"face {face_id} was not assigned" if rep.person is None
               else f"face {face_id} unassigned from {rep.person}")


@cli.command()
@click.argument("name", required=False)
@click.option("--photo", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Find whoever is the largest face of this photo (no need to be enrolled) instead of NAME.")
@model_option
@click.option("--min-score", type=THRESHOLD, default=None,
              help="Cosine threshold (default: identify's open-set threshold for this gallery).")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many photos.")
@click.option("--album", "album_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Make a folder of symbolic links to the photos found, best first.")
@click.option("--copy", is_flag=True, help="With --album: copy the photos instead of linking them.")
@json_option
@click.pass_context
@handle_errors
def find(ctx, name, photo, model, min_score, limit, album_dir, copy, as_json):
    """List the library photos in which NAME (or the face in --photo) appears, best first, with box and score."""
    from gallery.library.find import find_by_photo, find_person, make_album

    if (name is None) == (photo is None):
        raise click.UsageError("give a NAME or --photo QUERY (one of them)")
    if copy and album_dir is None:
        raise click.UsageError("--copy goes with --album DIR")
    with open_gallery(ctx) as g:
        if photo is not None:
            rep = find_by_photo(g, photo, model=model, min_score=min_score, limit=limit)
        else:
            rep = find_person(g, name, model=model, min_score=min_score, limit=limit)
    if album_dir is not None:
        rep = make_album(rep, album_dir, copy=copy)
    if as_json:
        return render.emit_json(rep.to_dict())
    click.echo(render.table(["score", "photo", "face", "box"],
                            [[f"{p.score:.3f}" + (" *" if p.assigned else ""), p.path, p.face_id,
                              ",".join(f"{v:.0f}" for v in p.box)] for p in rep.photos]))
    thr = "" if rep.threshold is None else f" at threshold {rep.threshold:.3f} ({rep.model})"
    click.echo(f"{len(rep.photos)} photo(s) of {rep.query}{thr}; * = assigned")
    if rep.album is not None:
        click.echo(f"album: {rep.album} ({rep.album_files} file(s))")
    if rep.random_weights:
        click.echo(RANDOM_NOTE)
