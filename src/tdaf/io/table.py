"""The one table layout of the commands (and the tasks' parts of them): aligned text columns, or Markdown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_table", "topk_table", "counts_line"]


def format_table(head: Sequence[str], rows: Sequence[Sequence[str]], note: str | None = None,
                 markdown: bool = False) -> str:
    """``head`` and ``rows`` as aligned columns under a dashed rule (or a Markdown table, the
    first column left-aligned and the others right-aligned), with ``note`` below."""
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in rows]
        return "\n".join(out + (["", note] if note else []))
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)] + ([note] if note else []))


def topk_table(results: Sequence[Mapping[str, Any]], k: int, first: str = "file") -> str:
    """``tdaf predict``'s table of labels: one row per input (``file``), ``label:score`` per rank."""
    head = [first] + [f"top-{j + 1}" for j in range(k)]
    return format_table(head, [[r["file"]] + [f"{t['label']}:{t['score']:.3f}" for t in r["topk"]] for r in results])


def counts_line(items: Sequence[str], skipped: int = 0, ignored: int = 0, skipped_what: str = "undecodable") -> str:
    """``tdaf predict``'s count summary: ``items`` ("3 image(s)", ...), then the inputs
    skipped and the non-input files ignored, when there were any."""
    parts = list(items)
    if skipped:
        parts.append(f"{skipped} {skipped_what} skipped")
    if ignored:
        parts.append(f"{ignored} non-image file(s) ignored")
    return ", ".join(parts)
