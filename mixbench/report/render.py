"""Text renderings of a table: Markdown, CSV and LaTeX, for any header and rows of cell strings.

These are the formats every mixbench table is written in (the results table of :mod:`mixbench.report.tables`
and the benchmark's step-cost table of :mod:`mixbench.bench`); what goes into the cells is up to the caller.

* :func:`markdown_table`: a GitHub-flavoured pipe table (``|`` inside a cell is escaped).
* :func:`csv_text`: comma-separated values with a header line, one line per mapping (``\\n`` line ends).
* :func:`latex_tabular`: a plain ``tabular`` (no packages needed) framed by ``\\hline``; every cell escaped.
* :func:`latex_escape`: text with LaTeX's special characters and the symbols mixbench tables use (±, —, Δ,
  −, ·) written so that LaTeX typesets them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ALIGNMENTS = ("l", "c", "r")
_MARKDOWN_RULE = {"l": "---", "c": ":---:", "r": "---:"}

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_SYMBOLS = {"±": r"$\pm$", "—": "--", "Δ": r"$\Delta$", "−": "$-$", "·": r"$\cdot$"}


def _checked_alignment(header: Sequence[str], align: Sequence[str] | None) -> list[str]:
    """``align`` as a list, one entry per column ("l" for every column when None)."""
    if align is None:
        return ["l"] * len(header)
    align = list(align)
    if len(align) != len(header):
        raise ValueError(f"{len(align)} alignments for {len(header)} columns")
    unknown = [entry for entry in align if entry not in ALIGNMENTS]
    if unknown:
        raise ValueError(f"alignments must be one of {', '.join(ALIGNMENTS)}, got {unknown}")
    return align


def _checked_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[list[str]]:
    """``rows`` as lists of strings, each as long as the header."""
    checked = []
    for number, row in enumerate(rows):
        cells = [str(cell) for cell in row]
        if len(cells) != len(header):
            raise ValueError(f"row {number} has {len(cells)} cells for {len(header)} columns")
        checked.append(cells)
    return checked


def _markdown_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None
) -> str:
    """A Markdown pipe table: the header line, the rule (``---``, ``---:`` right, ``:---:`` centre), one
    line per row; the lines joined with a trailing newline."""
    header = [str(cell) for cell in header]
    rule = "|" + "".join(_MARKDOWN_RULE[entry] + "|" for entry in _checked_alignment(header, align))
    lines = [_markdown_line(header), rule, *(_markdown_line(row) for row in _checked_rows(header, rows))]
    return "\n".join(lines) + "\n"


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV with the header ``columns`` and one line per mapping (a missing key is an empty field, a key that
    is not a column an error); ``\\n`` line ends."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped and ±, —, Δ, −, · as LaTeX typesets them."""
    escaped = "".join(_LATEX_SPECIAL.get(character, character) for character in str(text))
    for symbol, replacement in _LATEX_SYMBOLS.items():
        escaped = escaped.replace(symbol, replacement)
    return escaped


def _latex_line(cells: Sequence[str]) -> str:
    return " & ".join(latex_escape(cell) for cell in cells) + r" \\"


def latex_tabular(
    header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None
) -> str:
    """A ``tabular`` environment (column spec from ``align``, "l" when None): ``\\hline``, the header,
    ``\\hline``, the rows, ``\\hline``; every cell escaped; the lines joined with a trailing newline."""
    header = [str(cell) for cell in header]
    spec = "".join(_checked_alignment(header, align))
    lines = [
        f"\\begin{{tabular}}{{{spec}}}",
        "\\hline",
        _latex_line(header),
        "\\hline",
        *(_latex_line(row) for row in _checked_rows(header, rows)),
        "\\hline",
        "\\end{tabular}",
    ]
    return "\n".join(lines) + "\n"
