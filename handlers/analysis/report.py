"""``analysis.xlsx``: the Analysis sheet (every row filled with its comment's colour,
header frozen, filters on, readable widths), a ``Summary`` sheet (rows and scans per
comment with their shares, a bar chart of rows) and a ``Legend`` sheet (the comments,
their colours and rules, and how sections are matched).

openpyxl writes the workbook with everything but the data rows (a skeleton: a few
hundred cells); then the skeleton's zip is copied into the final file with the data
rows streamed into the Analysis sheet by ``sheetxml`` (see there for why). Row colours
are cell styles, not conditional formatting: any reader shows them, and a test reads
them back with openpyxl as plain fills.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from openpyxl import Workbook
from openpyxl.chart import BarChart, Reference
from openpyxl.chart.marker import DataPoint
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from daemon.fsutil import atomic_writer
from handlers.analysis import sheetxml
from handlers.analysis.model import (
    COLOURS,
    COMMENT,
    COMMENTS,
    MATCHING_RULE,
    RULES,
    SOURCE_ID,
    TARGET_ID,
)

DATA_SHEET, SUMMARY_SHEET, LEGEND_SHEET = "Analysis", "Summary", "Legend"
DATA_PART = "xl/worksheets/sheet1.xml"  # openpyxl names sheets by position; data is first
HEADER_FILL = PatternFill("solid", fgColor="FF305496")
HEADER_FONT = Font(name="Calibri", size=11, bold=True, color="FFFFFFFF")  # as body cells
MIN_WIDTH, MAX_WIDTH = 8, 60


def fill_of(comment: str) -> PatternFill:
    argb = COLOURS[next(c for c in COMMENTS if c.value == comment)][0]
    return PatternFill("solid", fgColor=argb, bgColor=argb)


def write_workbook(path: Path, analysis: pd.DataFrame, counts: dict[str, int],
                   scan_counts: dict[str, int] | None = None) -> None:
    """Write ``analysis`` (``model.ANALYSIS_COLUMNS``, ``comment`` categorical in
    ``COMMENTS`` order), ``counts`` (rows per comment) and ``scan_counts`` (scans per
    worst comment; default: ``counts``) to ``path`` atomically. Raises ``OSError``."""
    skeleton, styles = _skeleton(analysis, counts, scan_counts or counts)
    codes = np.asarray(analysis[COMMENT].cat.codes, dtype=np.int64)
    row_styles = np.asarray([styles[c.value] for c in COMMENTS], dtype=np.int64)[codes]
    with zipfile.ZipFile(io.BytesIO(skeleton)) as src, atomic_writer(path, "wb") as raw, \
            zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        for info in src.infolist():
            if info.filename == DATA_PART:
                _write_data_part(out, info, src.read(info), analysis, row_styles)
            else:
                out.writestr(info, src.read(info))


def _write_data_part(out: zipfile.ZipFile, info: zipfile.ZipInfo, xml: bytes,
                     analysis: pd.DataFrame, row_styles: np.ndarray) -> None:
    """The skeleton's Analysis sheet with the data rows inserted after its header row."""
    head, sep, tail = xml.partition(b"</sheetData>")
    if not sep or b"<row " not in head:
        raise ValueError(f"unexpected skeleton worksheet in {DATA_PART}")
    # The sheet's declared extent: streaming readers (openpyxl read-only) trust it.
    last = f"{get_column_letter(len(analysis.columns))}{len(analysis) + 1}"
    head, found = re.subn(rb'<dimension ref="[^"]*"\s*/>',
                          f'<dimension ref="A1:{last}"/>'.encode(), head, count=1)
    if not found:
        raise ValueError(f"no <dimension> in the skeleton's {DATA_PART}")
    # Opened by name, the part takes the archive's compression (a bare ZipInfo would be
    # stored uncompressed).
    with out.open(info.filename, "w", force_zip64=True) as part:
        part.write(head)
        for chunk in sheetxml.row_chunks(analysis, row_styles):
            part.write(chunk.encode("utf-8"))
        part.write(sep + tail)


def _skeleton(analysis: pd.DataFrame, counts: dict[str, int],
              scan_counts: dict[str, int]) -> tuple[bytes, dict[str, int]]:
    """The workbook without data rows, and the style index of each comment's row fill."""
    wb = Workbook()
    data = wb.active
    assert data is not None
    data.title = DATA_SHEET
    _data_header(data, analysis)
    _summary(wb.create_sheet(SUMMARY_SHEET), counts, scan_counts)
    styles = _legend(wb.create_sheet(LEGEND_SHEET))
    wb.properties.creator = "scanrelay"
    buffer = io.BytesIO()
    wb.save(buffer)
    return buffer.getvalue(), styles


def _data_header(ws: Worksheet, analysis: pd.DataFrame) -> None:
    columns = list(analysis.columns)
    ws.append(columns)
    for cell in ws[1]:
        cell.font, cell.fill = HEADER_FONT, HEADER_FILL
        cell.alignment = Alignment(vertical="center")
    # Freeze the header and the two ID columns, so both stay in view while scrolling.
    ws.freeze_panes = "C2"
    last = get_column_letter(len(columns))
    ws.auto_filter.ref = f"A1:{last}{len(analysis) + 1}"
    for index, name in enumerate(columns, start=1):
        ws.column_dimensions[get_column_letter(index)].width = _width(name, analysis[name])


def _width(name: str, column: pd.Series) -> float:
    """Header or longest value, whichever is wider (+ room for the filter button)."""
    if column.dtype == object or isinstance(column.dtype, pd.CategoricalDtype | pd.StringDtype):
        values = pd.Series(column.dropna().unique()).astype(str)
        longest = int(values.str.len().max()) if len(values) else 0
    else:
        longest = 12 if name not in (SOURCE_ID, TARGET_ID) else 10
    return float(min(MAX_WIDTH, max(MIN_WIDTH, len(name) + 3, longest + 2)))


def _summary(ws: Worksheet, counts: dict[str, int], scan_counts: dict[str, int]) -> None:
    """Rows per comment, and scans (pairs) per the worst comment of their rows."""
    rows, scans = sum(counts.values()), sum(scan_counts.values())
    ws.append(["Comment", "Rows", "Share of rows", "Scans", "Share of scans"])
    for cell in ws[1]:
        cell.font, cell.fill = HEADER_FONT, HEADER_FILL
    for row, comment in enumerate(COMMENTS, start=2):
        count, scan_count = counts.get(comment.value, 0), scan_counts.get(comment.value, 0)
        ws.append([comment.value, count, count / rows if rows else 0.0,
                   scan_count, scan_count / scans if scans else 0.0])
        for cell in ws[row]:
            cell.fill = fill_of(comment.value)
    ws.append(["Total", rows, 1.0 if rows else 0.0, scans, 1.0 if scans else 0.0])
    last = len(COMMENTS) + 2
    for column in range(1, 6):
        if column in (3, 5):
            for row in range(2, last + 1):
                ws.cell(row, column).number_format = "0.0%"
        ws.cell(last, column).font = Font(name="Calibri", size=11, bold=True)
    ws.append([])
    ws.append(["Rows: one per section of each pair. Scans: each pair once, counted under "
               "the worst comment of its rows (the first in the Legend)."])
    ws.column_dimensions["A"].width = max(len(c.value) for c in COMMENTS) + 4
    for letter in "BCDE":
        ws.column_dimensions[letter].width = 15
    ws.freeze_panes = "A2"
    ws.add_chart(_chart(ws), "G2")


def _chart(ws: Worksheet) -> BarChart:
    chart = BarChart()
    chart.type = "bar"  # horizontal: the comment names stay readable
    chart.title = "Rows per comment"
    chart.y_axis.title = "rows"
    chart.legend = None
    chart.x_axis.scaling.orientation = "maxMin"  # first comment on top, as in the table
    chart.y_axis.crosses = "max"  # and the pair counts below the bars, not above
    chart.x_axis.delete = chart.y_axis.delete = False  # Excel hides axes left unset
    chart.height, chart.width = 9, 22
    rows = len(COMMENTS) + 1
    chart.add_data(Reference(ws, min_col=2, min_row=1, max_row=rows), titles_from_data=True)
    chart.set_categories(Reference(ws, min_col=1, min_row=2, max_row=rows))
    series = chart.series[0]
    for index, comment in enumerate(COMMENTS):
        point = DataPoint(idx=index)
        point.graphicalProperties.solidFill = COLOURS[comment][0][2:]  # RGB without alpha
        point.graphicalProperties.line.solidFill = "7F7F7F"
        series.dPt.append(point)
    return chart


def _legend(ws: Worksheet) -> dict[str, int]:
    """The legend rows; returns each comment's fill style index (of its legend cell,
    whose only style is that fill: the data rows reuse it)."""
    ws.append(["Comment", "Colour", "Rule (the first that applies, top to bottom)"])
    for cell in ws[1]:
        cell.font, cell.fill = HEADER_FONT, HEADER_FILL
    styles: dict[str, int] = {}
    for row, comment in enumerate(COMMENTS, start=2):
        ws.append([comment.value, COLOURS[comment][1], RULES[comment]])
        for cell in ws[row]:
            cell.fill = fill_of(comment.value)
        styles[comment.value] = ws.cell(row, 1).style_id
    ws.append([])
    ws.append(["Rows of the Analysis sheet are filled with the colour of their comment."])
    ws.append([])
    ws.append(["How sections are matched"])
    ws.cell(ws.max_row, 1).font = Font(name="Calibri", size=11, bold=True)
    for line in MATCHING_RULE:
        ws.append([line])
    ws.column_dimensions["A"].width = max(len(c.value) for c in COMMENTS) + 4
    ws.column_dimensions["B"].width = 10
    ws.column_dimensions["C"].width = max(len(r) for r in RULES.values()) + 4
    return styles
