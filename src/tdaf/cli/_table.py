"""The one table layout of the commands (defined in :mod:`tdaf.io.table`, where tasks reach it too)."""

from ..io.table import format_table, topk_table

__all__ = ["format_table", "topk_table"]
