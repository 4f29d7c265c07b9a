"""A self-contained HTML page of tables and Altair charts: the Vega libraries inlined, so it
opens offline. Callers escape what they put in the body; chart data goes in as JSON that no
string can break out of."""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

import altair as alt
import vl_convert as vlc
from altair.utils._importers import vl_version_for_vl_convert

from traces.atomic import atomic_file

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; } td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child { text-align: left; } .facts td { text-align: left; }
p.what { color: #444; max-width: 46em; } p.warning { color: #a00; font-weight: bold; max-width: 46em; }
"""

Figure = tuple[str, str, alt.TopLevelMixin | None]  # title, what it shows, chart (None: nothing to draw, the sentence says so)


def page(title: str, body: list[str], figures: list[Figure], script: str = "") -> str:
    """The page: `body` (HTML, escaped by the caller), then each figure under its title and
    sentence, its chart drawn by vega-embed into `<div id="chartN">` (N counting the charts);
    `script` (the caller's own, no trace data in it) runs after."""
    parts, scripts = list(body), []
    for heading, sentence, chart in figures:
        parts.append(f'<h2>{escape(heading)}</h2>\n<p class="what">{escape(sentence)}</p>')
        if chart is None:
            continue
        n = len(scripts)
        parts.append(f'<div id="chart{n}"></div>')
        spec = script_json(chart.to_dict(format="vega-lite"))
        scripts.append(f"vegaEmbed('#chart{n}', {spec}, {{actions: false, renderer: 'svg'}}).catch(e => console.error(e));")
    bundle = vlc.javascript_bundle(vl_version=vl_version_for_vl_convert())
    return (
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title>"
        f"<style>{STYLE}</style><script>{bundle}</script></head>\n<body>\n"
        + "\n".join(parts)
        + f"\n<script>\n{chr(10).join(scripts)}\n{script}</script>\n</body></html>\n"
    )


def facts_table(facts: list[tuple[str, object]]) -> str:
    """A page's facts, a row each: name, then value (both escaped)."""
    rows = "".join(f"<tr><td>{escape(name)}</td><td>{escape(str(value))}</td></tr>" for name, value in facts)
    return f'<table class="facts">{rows}</table>'


def script_json(value: object) -> str:
    """JSON safe inside <script>: no trace string can close the element or look like markup."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_page(output: Path, html: str, figures: list[Figure], png_dir: Path | None, data: dict, data_json: Path | None) -> None:
    """The page at `output`; if asked, each chart as PNG into png_dir and `data` (what the page
    shows, as figures) as JSON."""
    with atomic_file(output) as out:
        out.write(html.encode())
    if png_dir is not None:
        write_pngs(figures, png_dir)
    if data_json is not None:
        with atomic_file(data_json) as out:
            out.write(json.dumps(data, indent=2).encode())


def write_pngs(figures: list[Figure], directory: Path) -> None:
    """Each figure's chart as NN-title.png (NN: its place among the figures)."""
    directory.mkdir(parents=True, exist_ok=True)
    for n, (title, _, chart) in enumerate(figures):
        if chart is not None:
            with atomic_file(directory / f"{n + 1:02d}-{title.lower().replace(' ', '-')}.png") as out:
                out.write(vlc.vegalite_to_png(chart.to_dict(format="vega-lite"), vl_version=vl_version_for_vl_convert()))
