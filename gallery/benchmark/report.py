"""Writing a benchmark report: report.json (every figure, and each embedder's FAR/FRR curve), report.md (tables +
plots) and the PNG plots."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from gallery.benchmark import plots
from gallery.benchmark.ident import HEAD_MIN_PROB
from gallery.benchmark.run import BenchmarkReport, report_curves
from gallery.errors import InvalidInputError

log = logging.getLogger(__name__)


def write_report(report: BenchmarkReport, out_dir: str | Path) -> list[Path]:
    """Write the report files into ``out_dir`` (created); returns every file written."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create report folder {out}: {exc.strerror}") from exc
    pngs = make_plots(report, out)
    # curves: per-embedder FAR/FRR arrays for the web app's threshold slider (app.reports reads them)
    doc = dict(report.to_dict(), plots=[p.name for p in pngs], curves=report_curves(report))
    (out / "report.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report, pngs), encoding="utf-8")
    return [out / "report.json", out / "report.md"] + pngs


def make_plots(report: BenchmarkReport, out: Path) -> list[Path]:
    rnd = {m: report.weights[m]["random"] for m in report.models}
    files = []
    for proto, sets in _score_sets(report).items():
        curves = [(label, rnd[m], g, i) for label, m, _, g, i in sets]
        files.append(plots.roc_plot(curves, f"ROC, {proto}", out / f"roc_{proto}.png"))
        for label, m, source, g, i in sets:
            marks = [(f"calibrated @FAR {c.target_far:g}" + ("" if c.measurable else " (not measurable)"),
                      c.threshold) for c in report.calibration if c.model == m and c.source == source]
            value, where = report.thresholds[m]
            marks.append((f"identify threshold ({where})", value))
            slug = label.replace(", ", "_").replace(" ", "")
            files.append(plots.score_histogram(label, rnd[m], g, i, marks, f"{proto} scores",
                                               out / f"scores_{proto}_{slug}.png"))
    if report.open_set is not None:
        files.append(plots.open_set_plot(report.open_set.rows, report.open_set.config.target_fpir,
                                         out / "open_set.png", rnd))
    if report.identification is not None:
        for k, h in report.identification.heads:
            files.append(plots.training_curves(h.model, rnd[h.model], k, h.history, h.best_epoch,
                                               out / f"head_training_{h.model}_augment{k}.png"))
        for (m, method), (labels, matrix) in report.identification.confusions.items():
            slug = "nn" if method.startswith("nearest") else "head"
            files.append(plots.confusion_plot(m, rnd[m], method, labels, matrix, out / f"confusion_{m}_{slug}.png"))
    return files


def _score_sets(report: BenchmarkReport) -> dict[str, list[tuple]]:
    """protocol -> [(curve label, model, calibration source, genuine, impostor)]."""
    sets: dict[str, list[tuple]] = {}
    if report.verification is not None:
        sets["verification"] = [(r.model, r.model, "verification pairs", r.genuine, r.impostor)
                                for r in report.verification.rows]
    if report.identification is not None and report.identification.scores:
        sets["identification"] = [(f"{m}, augment {k}", m, f"identification, augment {k}", g, i)
                                  for (m, k), (g, i) in sorted(report.identification.scores.items())]
    return sets


def _pct(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.2f}%"


def _table(headers: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines + [""]


def render_markdown(report: BenchmarkReport, pngs: list[Path]) -> str:
    r = report
    lines = [f"# facegallery benchmark: {r.dataset}", ""]
    models = ", ".join(f"{m} ({r.weights[m]['label']})" for m in r.models)
    lines += [f"Models: {models}. Seed {r.config['seed']}; target FAR {r.config['target_far']:g}; "
              f"total {r.seconds:.0f} s.", ""]
    if r.random_weights:
        lines += [f"**Rows marked 'random weights' ({', '.join(r.random_weights)}) come from untrained networks: "
                  "they test the code path, not the method.**", ""]
    if r.verification is not None:
        v = r.verification
        lines += [f"## Verification ({v.folds}-fold, {v.pairs_used} pairs, {v.images} distinct images)", ""]
        lines += _table(["model", "weights", "accuracy (mean +- std)", "ROC AUC", "TAR @ FAR 1e-2",
                         "TAR @ FAR 1e-3"], [
            [x.model, r.weights[x.model]["label"], f"{_pct(x.accuracy)} +- {_pct(x.accuracy_std)}",
             f"{x.auc:.4f}", _pct(x.tar_at_far[1e-2]), _pct(x.tar_at_far[1e-3])] for x in v.rows])
    if r.identification is not None:
        lines += _identification_md(r)
    if r.open_set is not None:
        lines += open_set_md(r.open_set)
    if r.calibration:
        lines += ["## Calibration", ""]
        lines += _table(["model", "weights", "source", "threshold", "FAR", "TAR", "genuine", "impostor",
                         "measurable"], [
            [c.model, r.weights[c.model]["label"], c.source, f"{c.threshold:.4f}", f"{c.far:.5f}", _pct(c.tar),
             c.genuine, c.impostor, "yes" if c.measurable else "no"] for c in r.calibration])
    lines += ["## Time per stage", "", "Seconds spent in each stage, summed over the run. Enrollment detects in a "
              "background thread while it embeds, so stages can add up to more than the wall time.", ""]
    lines += _table(["stage", "model", "seconds", "items", "ms / item"],
                    [[t["stage"], t["model"], t["seconds"], t["items"], t["ms_per_item"] or ""] for t in r.timings])
    if r.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in r.notes] + [""]
    if pngs:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    return "\n".join(lines)


def _identification_md(r: BenchmarkReport) -> list[str]:
    i = r.identification
    s = i.split
    lines = [f"## Identification (seed style: {s['enrolled_people']} people x {r.config['enroll_per_person']} "
             f"photos enrolled, {s['genuine_queries']} genuine probes, {s['impostor_people']} impostor people / "
             f"{s['impostor_queries']} impostor probes)", ""]
    lines += _table(["model", "weights", "augment", "method", "top-1", "macro-F1", f"TPIR @ FPIR {i.fpir:g}",
                     "threshold", "genuine accepted", "impostors accepted"], [
        [x.model, r.weights[x.model]["label"], x.augment, x.method, _pct(x.top1), _pct(x.macro_f1),
         _pct(x.tpir_at_fpir), f"{x.threshold:.3f} ({x.threshold_source})", _pct(x.genuine_acceptance),
         _pct(x.impostor_acceptance)] for x in i.rows])
    lines += [f"Nearest neighbour: the best person's cosine similarity against the identify threshold. Head: the "
              f"softmax probability of its top class, accepted at >= {HEAD_MIN_PROB}. TPIR counts a genuine probe "
              f"named correctly at the threshold that lets through the FPIR share of impostor probes.", ""]
    lines += ["### Galleries", ""]
    lines += _table(["model", "augment", "vectors", "index", "index bytes", "photos", "whole-image fallback",
                     "skipped"], [[g.model, g.augment, g.vectors, g.index_kind, g.index_bytes, g.enrolled_photos,
                                   g.fallback_photos, g.skipped_photos] for g in i.galleries])
    lines += ["### Heads", ""]
    lines += _table(["model", "weights", "augment", "people", "train / val vectors (split by photo)", "epochs",
                     "best epoch", "val accuracy"], [
        [h.model, r.weights[h.model]["label"], k, h.people, f"{h.train_vectors} / {h.val_vectors}", h.epochs_run,
         h.best_epoch + 1, _pct(h.val_accuracy) if h.val_accuracy is not None else "n/a"] for k, h in i.heads])
    return lines


def open_set_md(o) -> list[str]:
    """The open-set sweep table (:class:`gallery.benchmark.open_set_run.OpenSetResult`)."""
    c = o.config
    lines = [f"## Open-set identification ({o.people} people, {o.photos} photos; {c.seeds} galleries per size)", "",
             f"Scoring: {o.scoring}. A gallery of N people holds those with 5+ photos (4 enrolled, the rest are "
             f"genuine probes), then distractors enrolled with all their photos; strangers ({c.strangers:.0%} of "
             f"the people, at most {c.stranger_photos} photos each) are never enrolled. FPIR: strangers named; "
             f"TPIR: genuine probes named correctly. default = identify's threshold (gallery-size model at FPIR "
             f"{c.target_fpir:g}); calibrated = what `facegallery calibrate` stores for that gallery (FAR "
             f"{c.target_far:g}); fixed = the threshold used before the gallery-size model.", ""]
    for model, rows in o.rows.items():
        lines += [f"### {model}", ""]
        lines += _table(["people", "genuine / stranger probes", f"TPIR @ FPIR {c.target_fpir:g}",
                         "default threshold", "FPIR", "TPIR", "calibrated threshold", "FPIR", "TPIR",
                         "fixed threshold", "FPIR", "TPIR"], [
            [r.size, f"{r.genuine_probes:.0f} / {r.stranger_probes:.0f}",
             f"{_pct(r.tpir_at_fpir)} +- {_pct(r.tpir_at_fpir_sd)}"]
            + [v for rule in ("default", "calibrated", "fixed") for v in _rule(r.rules.get(rule))] for r in rows])
    return lines


def _rule(rule) -> list[str]:
    if rule is None:
        return ["", "", ""]
    threshold, fpir, tpir = rule
    return [f"{threshold:.4f}", _pct(fpir), _pct(tpir)]
