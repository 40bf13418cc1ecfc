"""Core commands: enroll, people, forget, reindex, check, identify, verify, models, demo."""
from __future__ import annotations

from pathlib import Path

import click

from cli import render
from cli.errors import CliError, handle_errors
from cli.main import MODEL_CHOICES, THRESHOLD, cli, open_gallery, settings_of
from gallery.config import DEFAULT_AUGMENT, DEFAULT_TARGET_FPIR

json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
models_option = click.option("--model", "-m", "models", multiple=True, type=MODEL_CHOICES,
                             help="Embedder(s) to use (repeatable). Default: every one available.")


@cli.command()
@click.argument("people_dir", type=click.Path(path_type=Path))
@models_option
@click.option("--augment", type=click.IntRange(0, 100), default=DEFAULT_AUGMENT, show_default=True,
              help="Augmented copies per face (0 = only the original crop).")
@click.option("--seed", type=int, default=0, show_default=True, help="Augmentation seed.")
@click.option("--whole-image-fallback", is_flag=True,
              help="When no face is detected, embed the whole image (for tight face crops such as att_faces).")
@click.option("--follow-symlinks", is_flag=True,
              help="Enroll what symbolic links leading out of PEOPLE_DIR point to (skipped by default).")
@json_option
@click.pass_context
@handle_errors
def enroll(ctx, people_dir, models, augment, seed, whole_image_fallback, follow_symlinks, as_json):
    """Enroll PEOPLE_DIR/<person>/<photo> into the gallery (incremental)."""
    from gallery.enroll.enroll import enroll_folder

    with open_gallery(ctx) as g:
        rep = enroll_folder(g, people_dir, models=models or None, augment=augment, seed=seed,
                            whole_image_fallback=whole_image_fallback, follow_symlinks=follow_symlinks)
    render.emit_json(rep.to_dict()) if as_json else click.echo(render.enroll_text(rep))


@cli.command()
@json_option
@click.pass_context
@handle_errors
def people(ctx, as_json):
    """List enrolled people with photo, face and embedding counts (and, once a library is scanned, their library
    faces: assigned, and suggested by a match)."""
    from gallery.manage.people import list_people

    with open_gallery(ctx) as g:
        rows = list_people(g)
    if as_json:
        return render.emit_json({"people": [p.to_dict() for p in rows]})
    models = sorted({m for p in rows for m in p.embeddings})
    library = ["library", "suggested"] if any(p.library or p.suggested for p in rows) else []
    click.echo(render.table(["name", "photos", "faces"] + models + library,
                            [[p.name, p.photos, p.faces] + [p.embeddings.get(m, 0) for m in models]
                             + ([p.library, p.suggested] if library else []) for p in rows]))


@cli.command()
@click.argument("name", required=False)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--finish", is_flag=True, help="Finish the erasures a killed forget left (index files, heads, "
              "database compaction); the next writer also does.")
@json_option
@click.pass_context
@handle_errors
def forget(ctx, name, yes, finish, as_json):
    """Erase NAME: photos, faces, embeddings, index vectors, heads trained with them."""
    from gallery.manage.people import forget as forget_person

    if name is None:
        if not finish:
            raise click.UsageError("give the NAME to forget (or --finish)")
        from gallery.manage.erasure import finish_erasures

        with open_gallery(ctx) as g:
            n = finish_erasures(g)
        return render.emit_json({"finished": n}) if as_json else click.echo(f"Finished {n} pending erasure(s).")
    if not yes and not as_json and not click.confirm(f"Forget {name} and every vector of them?", default=False,
                                                     err=True):
        raise CliError("not confirmed; nothing changed")
    with open_gallery(ctx) as g:
        rep = forget_person(g, name)
    if as_json:
        return render.emit_json(rep.to_dict())
    removed = ", ".join(f"{m}={n}" for m, n in rep.embeddings_removed.items()) or "none"
    click.echo(f"Forgot {rep.name}: {rep.photos} photo(s); vectors removed: {removed}."
               + (f" Library faces erased: {rep.library_faces}." if rep.library_faces else ""))
    if rep.heads_invalidated:
        click.echo("Heads deleted (retrain with train-heads): " + ", ".join(rep.heads_invalidated))


@cli.command()
@models_option
@click.option("--index", "kind", type=click.Choice(["flat", "ivf", "auto"]), default=None,
              help="Index type, remembered for later rebuilds (default: as chosen before; auto: by gallery size).")
@json_option
@click.pass_context
@handle_errors
def reindex(ctx, models, kind, as_json):
    """Rebuild the FAISS index files from the database."""
    from gallery.manage.maintenance import reindex as do_reindex

    with open_gallery(ctx) as g:
        res = do_reindex(g, models or None, kind)
    if as_json:
        return render.emit_json({"indexes": [r.to_dict() for r in res]})
    click.echo(render.table(["model", "vectors", "kind", "file"], [[r.model, r.vectors, r.kind, r.path] for r in res]))


@cli.command()
@click.option("--full", is_flag=True, help="SQLite's integrity_check instead of the quicker quick_check.")
@click.option("--repair", is_flag=True, help="Delete unusable vectors (NaN, wrong size) before checking.")
@json_option
@click.pass_context
@handle_errors
def check(ctx, full, repair, as_json):
    """Check the database file and the gallery's consistency (rows vs index vectors). Exit 1 on a problem."""
    from gallery.manage.maintenance import check as do_check

    with open_gallery(ctx) as g:
        rep = do_check(g, full=full, repair=repair)
    if as_json:
        render.emit_json(rep.to_dict())
    else:
        click.echo(", ".join(f"{k}={v}" for k, v in rep.counts.items()))
        for n in rep.notes:
            click.echo(f"note: {n}")
        for p in rep.problems:
            click.echo(f"problem: {p}")
        click.echo("OK" if rep.ok else "PROBLEMS FOUND")
    if not rep.ok:
        ctx.exit(1)


@cli.command()
# readable=False: an unreadable image is the library's per-image error ("Error: <path>: permission denied" alone,
# an error entry among several), not a usage error that would stop the other images being answered.
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@models_option
@click.option("--threshold", type=THRESHOLD, default=None,
              help="Cosine threshold for every model (default: calibrated, else one that follows the gallery's size).")
@click.option("--target-fpir", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=DEFAULT_TARGET_FPIR,
              show_default=True, help="Share of strangers the default threshold may name (ignored with --threshold or "
              "a calibrated threshold).")
@click.option("--top-k", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--aggregate", type=click.Choice(["centroid", "max", "mean3"]), default="centroid", show_default=True,
              help="Per-person score: cosine to the centroid of the person's photos, best vector, or mean of the "
                   "best three.")
@click.option("--whole-image-fallback", is_flag=True,
              help="When no face is found, search the whole image (tight face crops); such answers say 'fallback'.")
@click.option("--annotate", "annotate_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write a copy of each image with boxes and labels here.")
@json_option
@click.pass_context
@handle_errors
def identify(ctx, images, models, threshold, target_fpir, top_k, aggregate, whole_image_fallback, annotate_dir,
             as_json):
    """Identify every face in IMAGE(s)."""
    from gallery.recognize.identify import identify as do_identify

    with open_gallery(ctx) as g:
        rep = do_identify(g, list(images), models=models or None, threshold=threshold, top_k=top_k,
                          aggregate=aggregate, annotate_dir=annotate_dir, target_fpir=target_fpir,
                          whole_image_fallback=whole_image_fallback)
    if len(rep.images) == 1 and rep.images[0].error:
        raise CliError(f"{rep.images[0].path}: {rep.images[0].error}")
    render.emit_json(rep.to_dict()) if as_json else click.echo(render.identify_text(rep))


@cli.command()
@click.argument("image_a", type=click.Path(path_type=Path, readable=False))
@click.argument("image_b", type=click.Path(path_type=Path, readable=False))
@models_option
@click.option("--threshold", type=THRESHOLD, default=None)
@json_option
@click.pass_context
@handle_errors
def verify(ctx, image_a, image_b, models, threshold, as_json):
    """Are the largest faces of IMAGE_A and IMAGE_B the same person?"""
    from gallery.recognize.verify import verify as do_verify

    with open_gallery(ctx) as g:
        rep = do_verify(g, image_a, image_b, models=models or None, threshold=threshold)
    if as_json:
        return render.emit_json(rep.to_dict())
    rows = [[a.model, "same" if a.same else "different", f"{a.similarity:.3f}",
             f"{a.threshold:.3f} ({a.threshold_source})", "random weights" if a.random_weights else ""]
            for a in rep.answers]
    click.echo(render.table(["model", "verdict", "similarity", "threshold", ""], rows))


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
@handle_errors
def models(ctx, as_json):
    """List embedders and where their weights come from (subcommand: import)."""
    if ctx.invoked_subcommand is not None:
        return
    from gallery.manage.models import list_models

    st = list_models(settings_of(ctx).weights_dir)
    if as_json:
        return render.emit_json({"models": [m.to_dict() for m in st]})
    official = {True: "official", False: "unofficial weights", None: ""}
    rows = [[m.name, "yes" if m.present else "MISSING", m.source or "", m.size_bytes or "",
             (m.sha256 or "")[:16], official[m.official] if m.present else "", m.path or ", ".join(m.looked_in)]
            for m in st]
    click.echo(render.table(["model", "present", "source", "bytes", "sha256", "", "path / looked in"], rows))


@models.command("import")
@click.option("--model", "-m", "model", required=True, type=MODEL_CHOICES)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
@handle_errors
def models_import(ctx, model, file):
    """Validate FILE (a state_dict) against the model's architecture and install it in the weights dir."""
    from gallery.manage.models import import_model

    st = import_model(model, file, settings_of(ctx).weights_dir)
    click.echo(f"Imported {model} weights: {st.path} (sha256 {st.sha256})"
               + ("; unofficial weights: not the published file" if st.official is False else ""))


@cli.command()
@models_option
@click.option("--augment", type=click.IntRange(0, 100), default=2, show_default=True)
@click.option("--annotate", "annotate_dir", type=click.Path(file_okay=False, path_type=Path))
@json_option
@click.pass_context
@handle_errors
def demo(ctx, models, augment, annotate_dir, as_json):
    """Enroll the bundled sample (4 people from LFW) and identify five photos and a group photo."""
    from gallery.demo import run_demo

    home = settings_of(ctx).home / "demo"
    with open_gallery(ctx, home=home, db_url=f"sqlite:///{home / 'gallery.sqlite'}") as g:  # always embedded
        rep = run_demo(g, models=models or None, augment=augment, annotate_dir=annotate_dir)
    if as_json:
        return render.emit_json(rep.to_dict())
    click.echo(f"Demo gallery: {rep.gallery_dir}")
    click.echo(render.enroll_text(rep.enroll))
    click.echo("")
    click.echo(render.identify_text(rep.identify))
