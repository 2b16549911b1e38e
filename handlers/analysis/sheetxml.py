"""Fast, columnar serialisation of a DataFrame into worksheet rows (OOXML SpreadsheetML).

openpyxl and XlsxWriter both spend 7-15 µs per cell in Python; at 100,000 pairs the
analysis sheet has about 3 million cells, far over the time budget. So ``report``
lets openpyxl write everything else (styles, header, filters, the other sheets, the
chart) and this module writes the data rows: each column becomes cell strings through
``cells`` (vectorised), and each chunk of rows is joined by one ``str.join``.

The output is plain SpreadsheetML: ``<row r="N">`` elements whose cells carry a style
index (``s``, the fill of the row's comment) and follow each other in column order
without ``r`` attributes (optional in the format; a missing value is written as an
empty styled cell so that positions and colours stay right). Numbers go in ``<v>``,
booleans as ``t="b"``, text as inline strings, XML-escaped, with the characters XML 1.0
forbids removed and cut to Excel's 32,767 characters per cell.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pandas as pd

from handlers.analysis import cells

MAX_CELL_TEXT = 32767
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def escape_text(value: object) -> str:
    """Text fit for an XML text node (what XML cannot carry is dropped)."""
    text = _ILLEGAL_XML.sub("", str(value))[:MAX_CELL_TEXT]
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _inline(value: object) -> str:
    return f' t="inlineStr"><is><t xml:space="preserve">{escape_text(value)}</t></is></c>'


def row_chunks(frame: pd.DataFrame, styles: np.ndarray, first_row: int = 2,
               chunk: int = 10_000) -> Iterator[str]:
    """The ``<row>`` elements of ``frame``'s rows, ``chunk`` rows per yielded string.
    ``styles[i]`` is the style index (an int) of row ``i``'s cells."""
    for start in range(0, len(frame), chunk):
        part = frame.iloc[start:start + chunk]
        style_text = np.array(list(map(str, styles[start:start + chunk].tolist())),
                              dtype=object)
        prefix = '<c s="' + style_text + '"'
        numbers = range(first_row + start, first_row + start + len(part))
        opening = '<row r="' + np.array(list(map(str, numbers)), dtype=object) + '">'
        columns = [opening]
        columns += [prefix + _tails(part[name]) for name in part.columns]
        columns.append(np.full(len(part), "</row>", dtype=object))
        yield cells.join_rows(columns)


def _tails(column: pd.Series) -> np.ndarray:
    """Each cell of ``column`` after its ``<c s="N"`` prefix."""
    kind = cells.kind_of(column)
    if kind == "number":
        text, missing = cells.number_text(column)
        tails = "><v>" + text + "</v></c>"
    elif kind == "bool":
        tails, missing = cells.bool_text(column, ' t="b"><v>1</v></c>', ' t="b"><v>0</v></c>')
    else:
        tails, missing = cells.mapped_text(column, _inline)
    tails[missing] = "/>"  # an empty cell that keeps the row's fill
    return tails
