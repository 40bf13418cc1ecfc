"""Render benchmark figures as a text table (stdout) and as the generated block of BENCHMARKS.md.

BENCHMARKS.md keeps hand-written explanations around a generated block delimited by ``BEGIN``/``END`` markers;
a run replaces only the block, so rerunning the benchmark refreshes every number without losing the prose.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks.common import Figure

BEGIN = "<!-- BEGIN benchmarks.run output: generated, do not edit by hand -->"
END = "<!-- END benchmarks.run output -->"


def fmt_value(fig: Figure) -> str:
    if fig.ratio is None:
        return "-"
    if fig.unit == "x":
        return f"{fig.ratio:.2f}x"
    if fig.unit == "cosine":
        return f"{fig.ratio:.6f}"
    return f"{fig.ratio:.3g} {fig.unit}"


def fmt_met(fig: Figure) -> str:
    return {True: "met", False: "NOT met", None: "context"}[fig.met]


def text_table(figures: Sequence[Figure]) -> str:
    rows = [("section", "comparison", "value", "goal", "met", "absolute")]
    rows += [(f.section, f.name, fmt_value(f), f.goal, fmt_met(f), f.detail) for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows)


def markdown_block(figures: Sequence[Figure], header: Mapping[str, str], extra_tables: Mapping[str, str],
                   begin: str = BEGIN, end: str = END) -> str:
    """The generated block: header table, one row per figure, extra tables, the closing note, between the
    ``begin`` / ``end`` markers (each benchmark script that writes its own block passes its markers)."""
    lines = [begin, "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in header.items()]
    lines += ["", "| section | comparison | value | goal | met | absolute numbers |", "|---|---|---|---|---|---|"]
    lines += [f"| {f.section} | {_cell(f.name)} | {fmt_value(f)} | {_cell(f.goal)} | {fmt_met(f)} | "
              f"{_cell(f.detail)} |" for f in figures]
    for title, table in extra_tables.items():
        lines += ["", f"**{title}**", "", "```", table, "```"]
    lines += ["", "**Closing note (generated from the figures above).** " + closing_note(figures), "", end]
    return "\n".join(lines)


def closing_note(figures: Sequence[Figure]) -> str:
    goals = [f for f in figures if f.met is not None]
    met = [f for f in goals if f.met]
    missed = [f for f in goals if not f.met]
    parts = [f"{len(met)} of {len(goals)} goals met on this machine."]
    if met:
        parts.append("Met: " + "; ".join(f"{f.name} = {fmt_value(f)} ({f.goal})" for f in met) + ".")
    if missed:
        parts.append("Not met: " + "; ".join(f"{f.name} = {fmt_value(f)} ({f.goal})" for f in missed) + ".")
    return " ".join(parts)


def write_markdown(path: Path, block: str, preamble: str) -> None:
    """Replace the generated block of ``path``, or write ``preamble`` + block when the file has none."""
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = preamble.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def replace_block(path: Path, block: str, begin: str, end: str, heading: str) -> None:
    """Replace the block between ``begin`` and ``end`` markers in ``path`` (one benchmark's output), or append it
    under ``heading`` when the file has none; every other block and hand-written text is left as it is."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = old.rstrip() + f"\n\n{heading}\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
