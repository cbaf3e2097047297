"""Pieces of a self-contained HTML report: page, tables, inline SVG charts and base64 thumbnails.

Everything a report needs is inside the one file (inline CSS, a few lines of inline JavaScript, SVG,
``data:`` image URIs), so it opens offline in any browser, with no server. Nothing here imports more
than the standard library and numpy; thumbnails use Pillow when it is installed.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

THUMB_PX = 64  # thumbnails are at most this many pixels on their longer side
THUMB_QUALITY = 80  # JPEG quality of thumbnails: ~2 KB each at 64 px
# Tableau's 10 categorical colours, then evenly spaced hues for more classes.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")

CSS = "".join(
    (
        "body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;"
        "padding:16px 24px;color:#222}"
        "h1{font-size:22px;margin:8px 0}"
        "h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}"
        "h3{font-size:15px;margin:16px 0 6px}"
        "table{border-collapse:collapse;margin:6px 0}"
        "td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}"
        "th{background:#f4f4f4}"
        "td.n{text-align:right;font-variant-numeric:tabular-nums}"
        ".warn{background:#c00;color:#fff;font-weight:bold;padding:10px 14px;border-radius:4px;margin:10px 0;"
        "font-size:16px}"
        ".note{color:#555;font-size:13px}"
        ".bad{color:#b00}"
        ".good{color:#070}"
        ".pair{display:flex;gap:6px;align-items:center}"
        "img.t{width:64px;height:64px;object-fit:contain;background:#eee;border:1px solid #ccc}"
        ".nothumb{display:inline-block;width:64px;height:64px;background:#eee;border:1px solid #ccc;font-size:10px;"
        "color:#777;text-align:center;line-height:64px}"
        ".bar{display:inline-block;height:10px;background:#4e79a7;vertical-align:middle}"
        ".legend span{display:inline-block;margin:0 10px 4px 0;cursor:pointer}"
        ".legend i{display:inline-block;width:10px;height:10px;margin-right:4px}"
        "svg text{font:11px system-ui,sans-serif}"
        "svg circle.off{opacity:.05}"
        "nav a{margin-right:12px}"
    )
)

# Clicking a legend entry fades every other class in the same chart; clicking it again restores them.
SCRIPT = """
document.querySelectorAll('.legend span').forEach(function(s){s.addEventListener('click',function(){
 var svg=document.getElementById(s.parentNode.dataset.chart),c=s.dataset.cls,on=s.classList.toggle('sel');
 s.parentNode.querySelectorAll('span').forEach(function(o){if(o!==s)o.classList.remove('sel');});
 svg.querySelectorAll('circle').forEach(function(p){p.classList.toggle('off',on&&p.dataset.cls!==c);});});});
"""


def esc(value: object) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def colour(k: int) -> str:
    """The colour of class ``k`` (a CSS colour; grey for unlabelled ``k < 0``)."""
    if k < 0:
        return "#999"
    if k < len(PALETTE):
        return PALETTE[k]
    return f"hsl({(k * 137.508) % 360:.0f},60%,45%)"


def page(title: str, sections: Sequence[tuple[str, str, str]], header: str = "") -> str:
    """The whole document: ``sections`` are ``(anchor, heading, body html)``, listed in a navigation bar."""
    nav = " ".join(f'<a href="#{esc(a)}">{esc(h)}</a>' for a, h, _ in sections)
    body = "\n".join(f'<section id="{esc(a)}"><h2>{esc(h)}</h2>\n{b}\n</section>' for a, h, b in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body>\n<h1>{esc(title)}</h1>\n{header}\n<nav>{nav}</nav>\n{body}\n"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def warning(text: str) -> str:
    return f'<div class="warn">{esc(text)}</div>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def table(header: Sequence[str], rows: Iterable[Sequence[object]], attrs: str = "") -> str:
    """A table; a cell is text (escaped; numbers right-aligned) or ``("html", markup)`` for raw markup."""

    def cell(v: object) -> str:
        if isinstance(v, tuple) and len(v) == 2 and v[0] == "html":
            return f"<td>{v[1]}</td>"
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            return f'<td class="n">{esc(v)}</td>'
        return f"<td>{esc(v)}</td>"

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def raw(markup: str) -> tuple[str, str]:
    """A table cell holding ``markup`` as it is."""
    return ("html", markup)


def bar(fraction: float, width_px: int = 120, colour_css: str = "#4e79a7") -> str:
    """A horizontal bar ``fraction`` (0..1) of ``width_px`` long."""
    w = max(0, min(1, fraction)) * width_px
    return f'<span class="bar" style="width:{w:.0f}px;background:{colour_css}"></span>'


def heat_table(matrix: np.ndarray, labels: Sequence[str], corner: str, fmt: str = "{:d}") -> str:
    """A square matrix as a table whose cells are shaded by value relative to the row total (confusion
    matrices: rows true, columns predicted) and marked ``data-i``/``data-j`` for scripts and tests."""
    m = np.asarray(matrix)
    totals = m.sum(axis=1)
    head = f"<th>{esc(corner)}</th>" + "".join(f"<th>{esc(c)}</th>" for c in labels)
    rows = []
    for i, name in enumerate(labels):
        cells = []
        for j in range(len(labels)):
            v = m[i, j]
            share = float(v) / totals[i] if totals[i] else 0.0
            hue = "120,60%" if i == j else "0,70%"
            style = f' style="background:hsla({hue},45%,{share:.2f})"' if v else ""
            cells.append(f'<td class="n" data-i="{i}" data-j="{j}"{style}>{esc(fmt.format(v))}</td>')
        rows.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _scale(values: np.ndarray, lo_px: float, hi_px: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    lo, hi = (float(np.nanmin(v)), float(np.nanmax(v))) if v.size else (0.0, 1.0)
    span = hi - lo or 1.0
    return lo_px + (v - lo) / span * (hi_px - lo_px)


def scatter_svg(
    xy: np.ndarray,
    cls: np.ndarray,
    class_names: Sequence[str],
    titles: Sequence[str],
    chart_id: str,
    size: tuple[int, int] = (720, 520),
) -> str:
    """Points ``xy (n, 2)`` coloured by class ``cls (n,)`` (-1: unlabelled), each with a hover title,
    and a clickable legend (click a class to fade the others)."""
    w, h = size
    pad = 12
    px = _scale(xy[:, 0], pad, w - pad) if len(xy) else np.zeros(0)
    py = _scale(-xy[:, 1], pad, h - pad) if len(xy) else np.zeros(0)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour(int(c))}" data-cls="{int(c)}">'
        f"<title>{esc(t)}</title></circle>"
        for x, y, c, t in zip(px, py, cls, titles, strict=True)
    )
    present = sorted({int(c) for c in cls})
    legend = "".join(
        f'<span data-cls="{c}"><i style="background:{colour(c)}"></i>'
        f"{esc(class_names[c] if 0 <= c < len(class_names) else '(unlabelled)')}</span>"
        for c in present
    )
    return (
        f'<div class="legend" data-chart="{esc(chart_id)}">{legend}</div>'
        f'<svg id="{esc(chart_id)}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'xmlns="http://www.w3.org/2000/svg" style="border:1px solid #ddd;background:#fff">{dots}</svg>'
    )


def line_chart_svg(
    series: Sequence[tuple[str, Sequence[float], Sequence[float], str]],
    title: str,
    y_label: str,
    size: tuple[int, int] = (360, 220),
    marker_x: float | None = None,
) -> str:
    """Lines ``(name, xs, ys, css colour)`` on shared axes with a title, y range from the data, a
    legend and, when given, a dotted vertical line at ``marker_x`` (e.g. the best epoch)."""
    w, h = size
    left, right, top, bottom = 40, 10, 20, 34
    xs_all = [float(x) for _, xs, _, _ in series for x in xs]
    ys_all = [float(y) for _, _, ys, _ in series for y in ys if y is not None and math.isfinite(float(y))]
    if not xs_all or not ys_all:
        return f'<svg width="{w}" height="{h}"><text x="10" y="20">{esc(title)}: no data</text></svg>'
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = min(ys_all), max(ys_all)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    sx = lambda x: left + (float(x) - x0) / ((x1 - x0) or 1.0) * (w - left - right)  # noqa: E731
    sy = lambda y: top + (y1 - float(y)) / (y1 - y0) * (h - top - bottom)  # noqa: E731
    parts = [
        f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
        'fill="none" stroke="#ccc"/>',
        f'<text x="{left}" y="13">{esc(title)}</text>',
        f'<text x="2" y="{top + 8}">{y1:.3g}</text><text x="2" y="{h - bottom}">{y0:.3g}</text>',
        f'<text x="{left}" y="{h - bottom + 13}">{x0:g}</text>'
        f'<text x="{w - right}" y="{h - bottom + 13}" text-anchor="end">{x1:g}</text>',
        f'<text x="{(left + w - right) / 2:.0f}" y="{h - bottom + 13}" text-anchor="middle">{esc(y_label)}</text>',
    ]
    if marker_x is not None:
        mx = sx(marker_x)
        parts.append(
            f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{top}" y2="{h - bottom}" stroke="#888" stroke-dasharray="3,3"/>'
        )
    for k, (name, xs, ys, css) in enumerate(series):
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True) if y is not None)
        parts.append(
            f'<polyline points="{pts}" fill="none" stroke="{css}" stroke-width="1.6">'
            f"<title>{esc(name)}</title></polyline>"
        )
        lx = left + 4 + k * 90
        parts.append(
            f'<line x1="{lx}" x2="{lx + 14}" y1="{h - 8}" y2="{h - 8}" stroke="{css}" stroke-width="2"/>'
            f'<text x="{lx + 18}" y="{h - 4}">{esc(name)}</text>'
        )
    return (
        f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )


def pillow_available() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def thumbnail(path: Path, px: int = THUMB_PX) -> str:
    """The image at ``path`` as a ``data:image/jpeg;base64,...`` URI at most ``px`` pixels on a side, read
    and decoded by :func:`.picture.decode` (its :class:`~.picture.PictureError` says why not)."""
    from .picture import decode

    im = decode(path, (px, px))
    im.thumbnail((px, px), reducing_gap=2.0)
    return jpeg_uri(im)


def jpeg_uri(im: object) -> str:
    """A Pillow image, or an ``(h, w, 3)`` uint8 array, as a ``data:image/jpeg;base64,...`` URI."""
    import PIL.Image

    if isinstance(im, np.ndarray):
        im = PIL.Image.fromarray(np.ascontiguousarray(im, dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=THUMB_QUALITY)  # type: ignore[attr-defined]
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img(uri: str | None, title: str) -> str:
    """A thumbnail element, or a grey placeholder saying the image is not available."""
    if uri is None:
        return f'<span class="nothumb" title="{esc(title)}">no image</span>'
    return f'<img class="t" src="{uri}" alt="{esc(title)}" title="{esc(title)}">'
