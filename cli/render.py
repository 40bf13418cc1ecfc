"""Rendering library results for the terminal: aligned tables on stdout, JSON documents with --json."""
from __future__ import annotations

import json
from collections.abc import Sequence

import click


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def enroll_text(rep) -> str:
    lines = [f"Enrolled {len(rep.enrolled)} photo(s), {rep.unchanged} unchanged, {len(rep.skipped)} skipped."]
    lines.append("Embeddings added: " + ", ".join(f"{m}={n}" for m, n in rep.embeddings_added.items()))
    if rep.random_weights:
        lines.append("NOTE: random weights (development only) for: " + ", ".join(rep.random_weights))
    for m, why in rep.models_skipped.items():
        lines.append(f"Embedder {m} skipped: {why}")
    for p in rep.multi_face:
        lines.append(f"{p.path}: {p.faces_detected} faces; enrolled the largest")
    for p in rep.enrolled:
        if p.low_confidence:
            lines.append(f"{p.path}: low-confidence face (p={p.det_prob:.2f}) enrolled; check it")
        elif p.fallback:
            lines.append(f"{p.path}: no face detected; whole image enrolled (--whole-image-fallback)")
    for s in rep.skipped:
        lines.append(f"skipped: {s.path}: {s.reason}")
    lines += [f"note: {n}" for n in getattr(rep, "notes", ())]
    return "\n".join(lines)


def identify_text(rep) -> str:
    headers = ["image", "face", "box"] + list(rep.models)
    rows = []
    for img in rep.images:
        if img.error:
            rows.append([img.path, "-", f"error: {img.error}"] + [""] * len(rep.models))
            continue
        if not img.faces:
            rows.append([img.path, "-", "no face"] + [""] * len(rep.models))
        for f in img.faces:
            box = ",".join(str(round(v)) for v in f.box)
            cols = []
            for m in rep.models:
                a = f.models[m]
                who = a.identity if a.status == "match" else (f"{a.identity}?" if a.identity else "unknown")
                if a.status == "low_quality":
                    who = "low quality"
                col = f"{who} {a.score:.3f}"
                if a.head is not None:
                    col += f" [head: {a.head.identity} {a.head.probability:.2f}]"
                cols.append(col)
            rows.append([img.path, f.index, box + (" (fallback: whole image)" if f.fallback else "")] + cols)
    out = [table(headers, rows)]
    out += [f"{img.path} face {f.index}: low quality: {'; '.join(f.quality)}"
            for img in rep.images for f in img.faces if f.quality]
    reasons = getattr(rep, "threshold_reasons", {}) or {}
    out.append("thresholds: " + ", ".join(
        f"{m}={rep.thresholds[m]:.3f} ({reasons[m]['reason'] if m in reasons else rep.threshold_sources[m]})"
        for m in rep.models))
    if rep.random_weights:
        out.append("NOTE: results from random weights (development only): " + ", ".join(rep.random_weights))
    return "\n".join(out)
