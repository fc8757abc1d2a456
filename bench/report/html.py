"""Writing a comparison out: a self-contained HTML report plus its tables as CSV and Markdown.

Everything lands in `reports/<study>/`: `index.html` (figures embedded as PNG data, and each
table's CSV as a download link, no network or other file needed), and `main`, `per_task`,
`standings`, `comparisons`, `grid_points` and `failed_runs` as `.csv` and `.md` (those the study
has). `reports/index.html` links every report in the folder (`write_index`).
"""

from __future__ import annotations

import base64
import contextlib
import io
import re
import shlex
import time
import warnings
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import matplotlib.pyplot as plt
import pandas as pd
from PIL import Image  # a dependency of matplotlib

from bench.compare.analysis import Comparison
from bench.compare.over_steps import over_steps_sentence
from bench.compare.stats import telling_apart
from bench.environment import environment
from bench.errors import BenchError
from bench.formatting import format_number
from bench.report.figures import all_figures
from bench.store.export import replace_whole
from bench.store.storage import shareable_url, storage_identity

REPORTS_DIR = Path("reports")
# index.html names the storage its study was read from, in its head (with the study, its summary's
# first line and when it was written, for the folder's index), so that `bench compare` can say
# when a report replaces that of a study of the same name in another storage.
REPORT_TITLE = "<title>GradNorm Bench: "  # every report's, from the first: how one is told from other pages
GRID_ROWS_SHOWN = 20
_env = jinja2.Environment(loader=jinja2.PackageLoader("bench.report", "templates"),
                          autoescape=jinja2.select_autoescape(["html", "j2"]))


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(f"{v:.3g}" for v in value) + ")"
    return str(value)


def _weight(value: Any) -> str:
    # A weight is set (a grid's 0.3), not measured: trailing zeros would claim digits it lacks.
    return f"{value:.4g}" if isinstance(value, float) and value == value else _number(value)


def display_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers rounded for reading (weights without trailing zeros), lists of weights written
    as tuples."""
    return frame.apply(lambda col: col.map(_weight if str(col.name).startswith("weight") else _number))


def _markdown_cell(value: Any) -> Any:
    """A cell that keeps its row: a '|' in a name would start a new column, a line break a new row."""
    if not isinstance(value, str):
        return value
    return " ".join(value.replace("|", "\\|").split("\n"))


def markdown_table(frame: pd.DataFrame) -> str:
    """A table as GitHub Markdown, rounded for reading like the report's, whatever names and
    failure reasons its cells hold; columns with no value are left out, as on the report's page.

    >>> print(markdown_table(pd.DataFrame({"arm": ["a|b"], "reason": ["line 1\\nline 2"]})), end="")
    | arm   | reason        |
    |:------|:--------------|
    | a\\|b  | line 1 line 2 |
    """
    frame = frame.loc[:, frame.notna().any()]  # as on the page (`_html`)
    shown = display_table(frame).map(_markdown_cell)
    shown.columns = [_markdown_cell(str(c)) for c in shown.columns]
    # The text as rounded, not parsed as numbers again (1.770 became 1.77); numbers right-aligned.
    align = ["right" if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
             else "left" for c in frame.columns]
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"


def _html(frame: pd.DataFrame, selected: pd.Series | None = None, lowest: pd.DataFrame | None = None) -> str:
    """An HTML table; rows where `selected` is true get the class "selected", and in the columns
    of `lowest` (numbers, row for row with `frame`) each column's lowest value the class "lowest".
    A column with no value in any row (one seed's spread, a grid's point in a study without a grid)
    is left out: only noise on the page (the CSVs keep every column, so that studies' files line up)."""
    frame = frame.loc[:, frame.notna().any()]
    shown = display_table(frame).reset_index(drop=True)
    # Cells hold the user's names and failure reasons: escaped, like the template's text.
    styler = shown.style.hide(axis="index").format(escape="html").format_index(escape="html", axis=1)
    marks = pd.DataFrame("", index=shown.index, columns=shown.columns)
    if selected is not None:
        marks.loc[selected.to_numpy(dtype=bool), :] = "selected"
    if lowest is not None:
        for column in lowest.columns.intersection(shown.columns):
            marks.loc[(lowest[column] == lowest[column].min()).to_numpy(), column] = "lowest"
    if (marks != "").any().any():
        styler = styler.set_td_classes(marks)
    return styler.to_html()


def tables(c: Comparison) -> dict[str, pd.DataFrame]:
    main = c.main.copy()
    grid_points = pd.concat([g.points.assign(grid=arm) for arm, g in c.grids.items()],
                            ignore_index=True) if c.grids else pd.DataFrame()
    held_out = [g.held_out_table for g in c.grids.values() if not g.held_out_table.empty]
    return {"main": main, "per_task": c.per_task, "standings": c.standings,
            "comparisons": c.comparisons, "grid_points": grid_points,
            "held_out": pd.concat(held_out, ignore_index=True) if held_out else pd.DataFrame(),
            "failed_runs": c.failures, "over_steps": c.over_steps}


@contextlib.contextmanager
def missing_glyphs() -> Iterator[set[str]]:
    """Collect the characters that no installed font has, which matplotlib otherwise warns of
    for every figure and every draw (a wall of "Glyph 26085 missing from font(s) DejaVu Sans"
    for an arm named in Chinese), so that the caller can say so once. Other warnings pass on."""
    missing: set[str] = set()
    with warnings.catch_warnings(record=True) as caught:
        yield missing
    for warning in caught:
        glyph = re.match(r"Glyph (\d+) .*missing from (?:current )?font", str(warning.message))
        if glyph:
            missing.add(chr(int(glyph[1])))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _figure_payload(figure_id: str, title: str, fig: plt.Figure, note: str = "") -> dict[str, Any]:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:  # the size after bbox_inches
        width, height = image.size
    return {"id": figure_id, "title": title, "note": note, "width": width, "height": height,
            "data": base64.b64encode(buffer.getvalue()).decode("ascii")}


def report_storage(folder: Path) -> str | None:
    """The storage that the report in `folder` was read from; None without one, or for a report
    written before reports named their storage."""
    head = _report_head(folder / "index.html")
    return head.metas.get("bench-storage") if head else None


class _HeadMetas(HTMLParser):
    """The `<meta name=... content=...>` of a page's head (values unescaped)."""

    def __init__(self) -> None:
        super().__init__()
        self.metas: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "meta" and named.get("name"):
            self.metas[named["name"] or ""] = named.get("content") or ""


def _report_head(page: Path) -> _HeadMetas | None:
    """The head of a report of ours; None for another page or one that cannot be read."""
    try:
        with open(page, encoding="utf-8", errors="replace") as file:
            head = file.read(16384)
    except OSError:
        return None
    if REPORT_TITLE not in head:
        return None
    parser = _HeadMetas()
    parser.feed(head.split("</head>")[0])
    return parser


def write_index(folder: Path | None = None) -> Path | None:
    """Write `<folder>/index.html`: every report in the folder's subfolders, with its description
    and the first line of its summary, linked. Returns its path; None where there is no report, or
    where an index.html that is not ours is in the way (it is left as it is)."""
    folder = folder or REPORTS_DIR
    studies = []
    for page in sorted(folder.glob("*/index.html")):
        head = _report_head(page)
        if head is None:
            continue
        m = head.metas
        studies.append({"study": m.get("bench-study") or page.parent.name, "folder": page.parent,
                        "href": f"{quote(page.parent.name)}/index.html",
                        "description": m.get("description", ""), "summary": m.get("bench-summary", ""),
                        "generated": m.get("bench-generated", ""), "runs": m.get("bench-runs", ""),
                        "storage": m.get("bench-storage", ""), "unfinished": bool(m.get("bench-unfinished"))})
    index = folder / "index.html"
    if not studies or (index.exists() and _report_head(index) is None):
        return None
    side_by_side = _across_studies(studies)
    html = _env.get_template("index.html.j2").render(
        studies=studies, generated=time.strftime("%Y-%m-%d %H:%M %Z"),
        table=_html(side_by_side.apply(told_apart).reset_index(), lowest=side_by_side.reset_index(drop=True))
        if not side_by_side.empty else "")
    replace_whole(index, lambda partial: partial.write_text(html, encoding="utf-8"))
    return index


def told_apart(column: pd.Series, digits: int = 4, most: int = 8) -> pd.Series:
    """The column's numbers with the fewest significant digits (from `digits`, up to `most`) at
    which its lowest reads differently from every other value in it: beside 3.7073, the lowest,
    3.7070, in bold, would otherwise read 3.707 like it.

    >>> told_apart(pd.Series([2.48107, 2.48131, 2.602])).tolist()
    ['2.4811', '2.4813', '2.6020']
    """
    values = column.astype(float)
    lowest = values.min()
    digits = max([telling_apart([lowest, v], digits, most) for v in values.dropna() if v != lowest], default=digits)
    return values.map(lambda v: format_number(v, digits))


def _across_studies(studies: list[dict[str, Any]]) -> pd.DataFrame:
    """The studies side by side: one column per study, one row per arm name (the shipped
    studies share them), each arm's mean task-normalised test loss, from the main.csv beside
    each report. Rows follow the studies' tables: each arm (its labels together: a grid and its
    best point weighting every task, a GradNorm arm's alphas) by its mean place in them,
    relative to their lengths. A study whose main.csv is missing or unreadable is left out."""
    columns: dict[str, pd.Series] = {}
    places: dict[str, list[float]] = {}
    for s in studies:
        try:
            main = pd.read_csv(s["folder"] / "main.csv")
            columns[s["study"]] = pd.Series(main.normalized_test_loss.astype(float).to_numpy(), index=main.arm.astype(str))
        except (OSError, ValueError, AttributeError, pd.errors.ParserError):
            continue
        for i, label in enumerate(columns[s["study"]].index):
            places.setdefault(label.split(" (")[0], []).append(i / len(main))
    frame = pd.DataFrame(columns)  # its rows sorted by name
    place = {arm: sum(p) / len(p) for arm, p in places.items()}
    first_seen = list(dict.fromkeys(label for column in columns.values() for label in column.index))
    order = sorted(first_seen, key=lambda label: place[label.split(" (")[0]])  # stable: a group's labels as first seen
    return frame.reindex(order).rename_axis("arm")


def _check_replaceable(page: Path) -> None:
    """Refuse to replace an index.html that is not a report of ours (`--reports .` beside a
    study named like a site's folder)."""
    try:
        with open(page, encoding="utf-8", errors="replace") as file:
            head = file.read(8192)
    except FileNotFoundError:
        return
    except OSError:
        return  # unreadable: writing it will say why
    if REPORT_TITLE not in head:
        raise BenchError(f"{page} is not a GradNorm Bench report: it is left as it is; pass --reports "
                         "with another folder, or --no-report")


def write_report(c: Comparison, folder: Path | None = None, storage: str | None = None) -> Path:
    """Write reports/<study>/index.html (<study>@step<N>/ for a comparison at a step) and the tables;
    return the HTML file's path."""
    folder = (folder or REPORTS_DIR) / c.report_name
    _check_replaceable(folder / "index.html")
    folder.mkdir(parents=True, exist_ok=True)
    frames = tables(c)
    downloads: dict[str, str] = {}  # the CSVs inside the page too: a report sent on its own keeps its numbers
    for name, frame in frames.items():
        if frame.empty:  # no table of this kind now: one left from an earlier report would mislead
            for suffix in (".csv", ".md"):
                (folder / f"{name}{suffix}").unlink(missing_ok=True)
            continue
        text = frame.to_csv(index=False)
        downloads[name] = "data:text/csv;charset=utf-8;base64," + base64.b64encode(text.encode()).decode("ascii")
        replace_whole(folder / f"{name}.csv", lambda path: path.write_text(text, encoding="utf-8"))
        markdown = markdown_table(frame)
        replace_whole(folder / f"{name}.md", lambda path: path.write_text(markdown, encoding="utf-8"))

    grid_tables = []
    for arm, g in c.grids.items():
        shown = g.points.head(GRID_ROWS_SHOWN)
        grid_tables.append({"arm": arm, "n": len(g.points), "excluded": g.excluded, "shared_seeds": g.shared_seeds,
                            "shown": len(shown), "truncated": len(g.points) > len(shown),
                            "html": _html(shown.drop(columns=["selected"]), shown.selected),
                            "held_out": _html(g.held_out_table) if not g.held_out_table.empty else "",
                            "weighted_all": not g.weighted_all_held_out.empty})
    manifest = c.manifest
    run_env = dict(manifest.get("environment", {}))
    versions = run_env.pop("versions", {})
    run_env.update({f"version {k}": v for k, v in versions.items()})
    code = manifest.get("identity", {}).get("problem_code")
    if code:  # a problem of one's own: which version of its code trained the runs
        run_env["problem code"] = code
    report_env = environment(device=False)
    report_versions = report_env.pop("versions")
    report_env.update({f"version {k}": v for k, v in report_versions.items()})
    devices = sorted({d for d in c.runs.device.dropna().unique()})
    main_display = c.main.drop(columns=[col for col in ("kind",) if col in c.main])
    html = _env.get_template("report.html.j2").render(
        study=c.study, title=c.title, at_step=c.at_step, description=manifest.get("description", ""), tasks=c.tasks,
        arms=list(manifest.get("kinds") or dict.fromkeys(c.main.arm)),  # said where the study has no description
        n_tasks=len(c.tasks), n_runs=len(c.runs), seeds=sorted(c.runs.seed.dropna().astype(int).unique()),
        generated=time.strftime("%Y-%m-%d %H:%M %Z"), headline=c.headline, unfinished=c.unfinished,
        compared_with_grid=bool(c.grids) and (c.main.kind == "gradnorm").any(),
        sentences=c.paired_sentences,
        main_table=_html(main_display),
        standings_table=_html(c.standings) if not c.standings.empty else "",
        per_task_table=_html(c.per_task),
        comparisons_table=_html(c.comparisons.drop(columns=["sentence"])) if not c.comparisons.empty else "",
        failures_table=_html(c.failures) if not c.failures.empty else "", n_failed=len(c.failures),
        figures=[_figure_payload(i, t, f, over_steps_sentence(c.over_steps) if i == "over-steps" else "")
                 for i, t, f in all_figures(c)],
        grid_tables=grid_tables, run_command=c.run_command,
        storage=shlex.quote(shareable_url(storage)) if storage else None, storage_identity=storage_identity(storage),
        run_env=run_env, report_env=report_env, devices=devices,
        study_text=manifest.get("study_text", ""), downloads=downloads,
    )
    # Each file is written whole or not at all: a Ctrl-C or a full disk mid-write keeps the
    # previous report readable rather than leaving half a page.
    path = folder / "index.html"
    replace_whole(path, lambda partial: partial.write_text(html, encoding="utf-8"))
    return path
