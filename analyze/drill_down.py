"""The report's drill-down: for each pair of policies, every call site, cache and gfp class whose
charges fare differently, with what each policy did to them, in a table that sorts by any
column and filters as one types (offline: a few lines of script in the page, no library).

`report.html#drill=TEXT&sort=HEADING` opens the page with every table filtered by TEXT and
sorted by the column HEADING names (descending): a link to a view."""
from __future__ import annotations

from html import escape

import polars as pl

MAX_ROWS = 500  # per pair: the rows with the most charges; the table says how many more there are
GROUP = ("symbol", "cache", "kind", "gfp_class")
HEADINGS = ("call site", "cache", "what was charged", "gfp class")
CHARGES, TASKS = "n charges", "n tasks"  # with a space: no policy's name (a policy's outcome is a column beside them)

SCRIPT = """
for (const box of document.querySelectorAll("input.drill")) {
  const rows = [...document.getElementById(box.dataset.table).tBodies[0].rows];
  box.addEventListener("input", () => {
    const text = box.value.toLowerCase();
    for (const row of rows) row.hidden = !row.textContent.toLowerCase().includes(text);
  });
}
for (const th of document.querySelectorAll("table.drill th")) {
  th.addEventListener("click", () => {
    const body = th.closest("table").tBodies[0], column = th.cellIndex, numeric = th.classList.contains("number");
    const down = th.dataset.order !== "down";
    const key = (row) => numeric ? Number(row.cells[column].dataset.value) : row.cells[column].textContent;
    const sorted = [...body.rows].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0) * (down ? -1 : 1));
    for (const row of sorted) body.appendChild(row);
    th.dataset.order = down ? "down" : "up";
  });
}
const asked = new URLSearchParams(location.hash.slice(1));
if (asked.has("drill")) for (const box of document.querySelectorAll("input.drill")) { box.value = asked.get("drill"); box.dispatchEvent(new Event("input")); }
if (asked.has("sort")) for (const th of document.querySelectorAll("table.drill th")) if (th.textContent === asked.get("sort")) th.click();
"""


def pair_rows(divergent: pl.DataFrame, a: str, b: str) -> pl.DataFrame:
    """The charges a and b treat differently, by call site, cache, kind and gfp class and by
    what each policy did: how many, and how many tasks made them; most charges first."""
    return (
        divergent.filter(pl.col(a) != pl.col(b))
        .group_by(*GROUP, a, b).agg(pl.len().alias(CHARGES), pl.col("task").n_unique().alias(TASKS))
        .sort([CHARGES, *GROUP], descending=[True, False, False, False, False], nulls_last=True)
    )


def drill_down(divergent: pl.DataFrame, pairs: list[tuple[str, str]]) -> tuple[str, str]:
    """The section's HTML (escaped) and its script."""
    parts = ['<h2>Drill-down</h2>\n<p class="what">For each pair, every call site, cache, kind of charge and gfp class '
             "whose charges fare differently, with each policy's outcome. Click a heading to sort; type to filter.</p>"]
    for n, (a, b) in enumerate(pairs):
        rows = pair_rows(divergent, a, b)
        shown = rows.head(MAX_ROWS)
        more = f" (the {MAX_ROWS} with the most charges of {rows.height})" if rows.height > MAX_ROWS else ""
        head = "".join(f"<th>{escape(h)}</th>" for h in (*HEADINGS, a, b)) + '<th class="number">charges</th><th class="number">tasks</th>'
        body = "".join(
            "<tr>" + "".join(f"<td>{escape('-' if row[c] is None else str(row[c]))}</td>" for c in (*GROUP, a, b))
            + f'<td data-value="{row[CHARGES]}">{row[CHARGES]:,}</td><td data-value="{row[TASKS]}">{row[TASKS]:,}</td></tr>'
            for row in shown.iter_rows(named=True)
        )
        parts.append(
            f"<details{' open' if n == 0 else ''}><summary>{escape(a)} / {escape(b)}: {rows[CHARGES].sum():,} charges at "
            f"{rows.height:,} places{escape(more)}</summary>\n"
            f'<input class="drill" type="search" placeholder="filter" data-table="drill{n}">\n'
            f'<table class="drill" id="drill{n}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>'
        )
    return "\n".join(parts), SCRIPT
