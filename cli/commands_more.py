"""Commands of the heads / benchmark work: train-heads, benchmark, calibrate; and reembed."""
from __future__ import annotations

from pathlib import Path

import click

from cli import render
from cli.errors import CliError, handle_errors
from cli.main import MODEL_CHOICES, THRESHOLD, cli, open_gallery, settings_of
from gallery.config import DEFAULT_AUGMENT, DEFAULT_TARGET_FAR

json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
models_option = click.option("--model", "-m", "models", multiple=True, type=MODEL_CHOICES,
                             help="Embedder(s) to use (repeatable). Default: every one available.")
target_far_option = click.option(
    "--target-far", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=DEFAULT_TARGET_FAR,
    show_default=True, help="False-accept rate (per probe-vs-person comparison) the threshold is chosen for.")


def _pct(v) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.2f}%"


@cli.command("train-heads")
@models_option
@click.option("--epochs", type=click.IntRange(1, 10_000), default=200, show_default=True,
              help="Most epochs (early stopping on held-out photos usually ends sooner).")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
@click.pass_context
@handle_errors
def train_heads(ctx, models, epochs, seed, as_json):
    """Train a classifier head per embedder on the gallery's stored vectors (backbone frozen)."""
    from gallery.heads.model import TrainConfig
    from gallery.heads.train import train_heads as do_train

    with open_gallery(ctx) as g:
        reports = do_train(g, models or None, TrainConfig(epochs=epochs, seed=seed))
    if as_json:
        return render.emit_json({"heads": [r.to_dict() for r in reports]})
    rows = [[r.model, "random weights" if r.random_weights else "pretrained", r.people,
             f"{r.train_vectors}/{r.val_vectors}", r.epochs_run, r.best_epoch + 1, _pct(r.val_accuracy), r.path]
            for r in reports]
    click.echo(render.table(["model", "weights", "people", "train/val vectors (split by photo)", "epochs", "best",
                             "val acc", "file"], rows))


@cli.command()
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@models_option
@click.option("--pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="LFW pairs file, View 2 (pairs.txt) or View 1 (pairsDevTest.txt): adds 10-fold verification.")
@click.option("--protocol", type=click.Choice(["auto", "identification", "verification", "both", "open-set"]),
              default="auto", show_default=True,
              help="auto = identification, plus verification when --pairs is given; open-set = the sweep over "
                   "gallery sizes (default vs calibrated thresholds).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write report.md, report.json and PNG plots here.")
@click.option("--augment", multiple=True, type=click.IntRange(0, 100),
              help=f"Augmented copies per enrolled photo; repeat to compare (default {DEFAULT_AUGMENT}).")
@click.option("--identities", type=click.IntRange(1), default=70, show_default=True, help="People enrolled.")
@click.option("--enroll-per-person", type=click.IntRange(1), default=4, show_default=True)
@click.option("--impostors", type=click.IntRange(0), default=70, show_default=True, help="People never enrolled.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fpir", type=click.FloatRange(0, 1, min_open=True), default=0.01, show_default=True)
@target_far_option
@click.option("--threshold", type=THRESHOLD, default=None,
              help="Identify threshold for every model (default: per model).")
@click.option("--store-threshold", is_flag=True, help="Store each calibrated threshold in the gallery (--gallery).")
@click.option("--size", "sizes", multiple=True, type=click.IntRange(1),
              help="open-set: gallery size in people; repeat (default 10, 70, 300, 1000).")
@click.option("--seeds", type=click.IntRange(1, 100), default=5, show_default=True,
              help="open-set: galleries drawn per size.")
@click.option("--people", "people_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="open-set: only the people of this LFW people file (e.g. peopleDevTest.txt).")
@json_option
@click.pass_context
@handle_errors
def benchmark(ctx, dataset_dir, models, pairs, protocol, report_dir, augment, identities, enroll_per_person,
              impostors, seed, fpir, target_far, threshold, store_threshold, sizes, seeds, people_file, as_json):
    """Compare embedders, nearest neighbour and heads on DATASET_DIR/<person>/<image>, in a temporary gallery."""
    from gallery.benchmark.open_set_run import OpenSetConfig
    from gallery.benchmark.run import BenchmarkConfig, run_benchmark, store_benchmark_thresholds

    open_set = OpenSetConfig(seeds=seeds, target_fpir=fpir, target_far=target_far)
    if sizes:
        open_set = OpenSetConfig(tuple(sorted(set(sizes))), seeds, fpir, target_far)
    config = BenchmarkConfig(
        models=tuple(models), pairs=pairs, protocol=protocol, identities=identities,
        enroll_per_person=enroll_per_person, impostors=impostors, seed=seed,
        augment=tuple(dict.fromkeys(augment)) or (DEFAULT_AUGMENT,), target_far=target_far, fpir=fpir,
        threshold=threshold, open_set=open_set, people_file=people_file)
    rep = run_benchmark(dataset_dir, config, settings_of(ctx))
    doc = rep.to_dict()
    if report_dir is not None:
        from gallery.benchmark.report import write_report

        doc["report_files"] = [str(p) for p in write_report(rep, report_dir)]
    if store_threshold:
        with open_gallery(ctx) as g:
            stored, notes = store_benchmark_thresholds(g, rep)
        doc["stored_thresholds"] = [c.to_dict() for c in stored]
        doc["store_notes"] = notes
    if as_json:
        return render.emit_json(doc)
    click.echo(_benchmark_text(rep, doc))


def _rule_cells(rule) -> list[str]:
    threshold, fpir, tpir = rule
    return [f"{threshold:.4f}", _pct(fpir), _pct(tpir)]


def _benchmark_text(rep, doc) -> str:
    lab = {m: rep.weights[m]["label"] for m in rep.models}
    tables = []
    if rep.verification is not None:
        tables.append(render.table(["verification", "weights", "accuracy", "+-std", "AUC", "TAR@1e-2", "TAR@1e-3"], [
            [r.model, lab[r.model], _pct(r.accuracy), _pct(r.accuracy_std), f"{r.auc:.4f}",
             _pct(r.tar_at_far[1e-2]), _pct(r.tar_at_far[1e-3])] for r in rep.verification.rows]))
    if rep.identification is not None:
        tables.append(render.table(
            ["identification", "weights", "augment", "method", "top-1", "macro-F1", "TPIR@FPIR", "impostors acc."],
            [[r.model, lab[r.model], r.augment, r.method, _pct(r.top1), _pct(r.macro_f1), _pct(r.tpir_at_fpir),
              _pct(r.impostor_acceptance)] for r in rep.identification.rows]))
    if rep.open_set is not None:
        tables.append(render.table(["open set", "people", "TPIR@FPIR", "default thr", "FPIR", "TPIR",
                                    "calibrated thr", "FPIR", "TPIR"], [
            [m, r.size, _pct(r.tpir_at_fpir), *_rule_cells(r.rules["default"]), *_rule_cells(r.rules["calibrated"])]
            for m, rows in rep.open_set.rows.items() for r in rows]))
    if rep.calibration:
        tables.append(render.table(["calibration", "weights", "source", "threshold", "FAR", "TAR", "measurable"], [
            [c.model, lab[c.model], c.source, f"{c.threshold:.4f}", f"{c.far:.5f}", _pct(c.tar),
             "yes" if c.measurable else "no"] for c in rep.calibration]))
    lines = [f"note: {n}" for n in rep.notes]
    lines += [f"stored threshold {c['model']} = {c['threshold']} ({c['source']})"
              for c in doc.get("stored_thresholds", [])]
    lines += doc.get("store_notes", [])
    if doc.get("report_files"):
        lines.append(f"report: {doc['report_files'][1]}")
    lines.append(f"time: {rep.seconds:.1f} s")
    return "\n\n".join(tables) + "\n\n" + "\n".join(lines)


@cli.command()
@models_option
@target_far_option
@click.option("--store", is_flag=True, help="Store the thresholds in the gallery (identify uses them).")
@click.option("--aggregate", type=click.Choice(["centroid", "max"]), default="centroid", show_default=True,
              help="Score as identify --aggregate does: centroid of the person's other photos, or their best vector.")
@json_option
@click.pass_context
@handle_errors
def calibrate(ctx, models, target_far, store, aggregate, as_json):
    """Pick each embedder's threshold for a target FAR, leave-one-photo-out on the gallery's own photos."""
    from gallery.calibration.calibrate import calibrate_gallery

    with open_gallery(ctx) as g:
        cals = calibrate_gallery(g, models or None, target_far, store=store, aggregate=aggregate)
    if as_json:
        return render.emit_json({"calibration": [c.to_dict() for c in cals]})
    click.echo(render.table(["model", "weights", "threshold", "FAR", "TAR", "genuine", "impostor", "measurable",
                             "stored"], [
        [c.model, "random weights" if c.random_weights else "pretrained", f"{c.threshold:.4f}", f"{c.far:.5f}",
         _pct(c.tar), c.genuine, c.impostor, "yes" if c.measurable else "no (too few impostors)",
         "yes" if c.stored else "no"]
        for c in cals]))


@cli.command()
@models_option
@click.option("--force", is_flag=True, help="Re-embed even when the stored vectors were made with these weights.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="The augmentation --seed the photos were enrolled with.")
@click.option("--drop-missing", is_flag=True,
              help="Delete the vectors of photos that cannot be re-read (moved, changed, web uploads) instead of "
                   "stopping with nothing changed.")
@json_option
@click.pass_context
@handle_errors
def reembed(ctx, models, force, seed, drop_missing, as_json):
    """Re-embed the stored faces with the weights loaded now (after `models import` of other weights)."""
    from gallery.enroll.reembed import reembed as do_reembed

    with open_gallery(ctx) as g:
        rep = do_reembed(g, models or None, force=force, seed=seed, drop_missing=drop_missing)
    if as_json:
        return render.emit_json(rep.to_dict())
    click.echo(_reembed_text(rep))


def _reembed_text(rep) -> str:
    lines = []
    if rep.reembedded:
        lines.append(render.table(["model", "weights now", "was", "photos", "vectors", "skipped", "generation"], [
            [r.model, r.new_weights[:12] + (" (random)" if r.random_weights else ""),
             ",".join(w[:12] for w in r.old_weights), r.photos, r.vectors, len(r.skipped), r.generation]
            for r in rep.reembedded]))
    for r in rep.reembedded:
        lines += [f"skipped: {s.path}: {s.reason} ({r.model} vectors removed)" for s in r.skipped]
        if r.threshold_dropped is not None:
            lines.append(f"{r.model}: calibrated threshold {r.threshold_dropped:.4f} dropped (made with the old "
                         f"weights); run facegallery calibrate --store")
        if r.head_stale:
            lines.append(f"{r.model}: the trained head is stale; run facegallery train-heads")
    lines += [f"{m}: up to date (nothing to re-embed)" for m in rep.up_to_date]
    lines += [f"{m}: skipped: {why}" for m, why in rep.models_skipped.items()]
    return "\n".join(lines) if lines else "nothing to re-embed"


# ----------------------------------------------------------------------------------------------------------------
# facegallery app: the Streamlit web app (app/page.py), issue 6. Kept in this block; other commands go above.
# ----------------------------------------------------------------------------------------------------------------
@cli.command()
@click.option("--gallery", "app_home", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Gallery folder (same as the global --gallery / FACEGALLERY_HOME).")
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on: 127.0.0.1 keeps the app on this machine. 0.0.0.0 exposes it to the network: "
                   "anyone who reaches it can enroll, forget and open image files on this machine by path.")
@click.option("--report", type=click.Path(exists=True, path_type=Path), default=None,
              help="Benchmark report folder or report.json shown in the sidebar (env FACEGALLERY_REPORTS).")
@click.option("--new-token", is_flag=True, help="Make a new access token (shown once; the old one stops working).")
@click.option("--no-auth", is_flag=True, help="No access token (only with a loopback --host).")
@click.option("--allow-paths", is_flag=True, help="Let the page open image files on this machine by path.")
@click.pass_context
@handle_errors
def app(ctx, app_home, port, host, report, new_token, no_auth, allow_paths):
    """Serve the web app: identify faces in uploads, enroll, forget, compare embedders; the photo library's
    clusters (name, merge) and a person's library photos.

    Every page asks for an access token, made on the first start and shown once (stored hashed in the gallery).
    """
    import importlib.util

    from gallery.config import Settings
    from gallery.manage.access import app_access

    if importlib.util.find_spec("streamlit") is None:
        raise CliError("the web app needs Streamlit: pip install 'facegallery[app]'")
    kwargs = dict(ctx.find_root().obj["settings_kwargs"])
    if app_home is not None:
        kwargs["home"] = app_home
    settings = Settings(**kwargs)
    access = app_access(settings, host=host, no_auth=no_auth, allow_paths=allow_paths, renew=new_token)
    from app.launch import serve

    for note in access.notes:
        click.echo(f"warning: {note}", err=True)
    if access.token is not None:
        click.echo(f"Access token (shown once; stored hashed in the gallery): {access.token}", err=True)
    elif access.auth:
        click.echo("Access token: the one shown when it was made (facegallery app --new-token makes another)",
                   err=True)
    click.echo(f"facegallery app: http://{host}:{port} (gallery {settings.home}); Ctrl+C stops it", err=True)
    serve(settings, host=host, port=port, report=report, access=access.to_env())
