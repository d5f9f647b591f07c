"""CSV files for people to open in a spreadsheet, safe from formula (CSV) injection.

A spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` (and some also after a tab
or carriage return) as a formula: `=HYPERLINK(...)` in an uploaded row would come back as
a live link in the results. Following OWASP, such a text cell is written with a leading
single quote (`'=HYPERLINK(...)`), which spreadsheets show as text. Only text is escaped:
numeric columns are written as they are (-5 stays -5), and so is a text cell that is a
plain number ("-5", "+1.5e3"), since a spreadsheet reads that as the number, not a formula.
Column names are escaped like cells. Parquet outputs keep the values unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, Any

import pandas as pd

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def escape_cell(value: Any) -> Any:
    """`value`, with a leading `'` if it is text a spreadsheet would run as a formula."""
    if (isinstance(value, str) and value.startswith(FORMULA_PREFIXES)
            and not _PLAIN_NUMBER.match(value)):
        return "'" + value
    return value


def escape_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` with every text cell and column name passed through `escape_cell`."""
    out = frame.copy()
    for i, dtype in enumerate(frame.dtypes):  # by position: column names may repeat
        if (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)
                or isinstance(dtype, pd.CategoricalDtype)):
            out.isetitem(i, frame.iloc[:, i].astype(object).map(escape_cell))
    out.columns = [escape_cell(c) for c in frame.columns]
    return out


def write_csv(frame: pd.DataFrame, target: str | Path | IO[str], **to_csv: Any) -> None:
    """`frame.to_csv(target, index=False, ...)` with formula-like text escaped (see module)."""
    to_csv.setdefault("index", False)
    escape_frame(frame).to_csv(target, **to_csv)
