"""The page: one self-contained HTML document, every recorded string escaped.

Records, READMEs and dataset names are untrusted input: every string reaches the page
through :func:`esc` (``html.escape`` with quotes), and the page forbids itself any load
from the network with a Content-Security-Policy (``default-src 'none'``): images are
``data:`` URIs, styles inline, and there is no script at all.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

#: What the page may load: nothing but its own inline styles and data: images.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
MAX_EMBEDDED_IMAGE_BYTES = 8 * 1024 * 1024  # an image item of a dataset embedded as is (claim plot...)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LONG = 40  # characters of a table cell that may break anywhere (URIs, digests)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1f3a5f;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px;font-size:22px;word-break:break-all}
header .sub{opacity:.85;font-size:13px;word-break:break-all}
main{max-width:1180px;margin:0 auto;padding:16px 24px 40px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);margin:16px 0;padding:14px 20px}
h2{font-size:17px;margin:4px 0 10px;color:#1f3a5f}
h3{font-size:14px;margin:12px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:4px 0 8px}
th,td{border-bottom:1px solid #e3e6ea;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
.long{overflow-wrap:anywhere}
.card table{width:100%;table-layout:fixed}
.card th{width:36%;white-space:normal}
.card td{overflow-wrap:anywhere}
th{color:#56607a;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:420px;white-space:pre-wrap;word-break:break-all}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:12px}
.card{border:1px solid #e3e6ea;border-radius:6px;padding:8px 12px}
.note{color:#56607a;font-size:12px;font-style:italic}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}
.banner{background:#c62828;color:#fff;padding:10px 32px;font-weight:600}
.big{font-size:26px;font-weight:700}
img.plot{max-width:100%;height:auto}
.samples{display:flex;flex-wrap:wrap;gap:8px}
.samples figure{margin:0;text-align:center;font-size:11px;width:64px}
.samples img{width:64px;height:64px;image-rendering:pixelated;border:1px solid #ccd}
td.cm{text-align:center;min-width:28px;font-size:12px}
"""


def esc(value: Any) -> str:
    """``value`` as text safe anywhere in the page (element content or a quoted attribute)."""
    return html.escape(value if isinstance(value, str) else str(value), quote=True)


def short(value: Any, limit: int = 120) -> str:
    """``value`` as one line of at most ``limit`` characters (escaped)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return esc(text if len(text) <= limit else text[: limit - 1] + "…")


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def kv_table(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of (label, value); values are escaped (use :class:`Raw` for markup)."""
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{_cell(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


class Raw(str):
    """Markup made here, from escaped parts: put in a table as is."""


def _cell(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return '<span class="note">—</span>'
    if isinstance(value, float):
        return esc(f"{value:.6g}")
    text = short(value, 400)
    return f'<span class="long">{text}</span>' if len(text) > LONG else text


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[int] = ()) -> str:
    """A table with a header row; columns listed in ``numeric`` are right-aligned."""
    head = "".join(f"<th{' class=num' if i in numeric else ''}>{esc(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in numeric else ''}>{_cell(v)}</td>" for i, v in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def png_img(data: bytes, alt: str, *, cls: str = "plot") -> str:
    """An ``<img>`` of PNG bytes as a data: URI (refused unless they start as a PNG does)."""
    if not data.startswith(PNG_MAGIC) or len(data) > MAX_EMBEDDED_IMAGE_BYTES:
        return note(f"{alt}: not shown (not a PNG of at most {MAX_EMBEDDED_IMAGE_BYTES // 2**20} MiB)")
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img class="{esc(cls)}" alt="{esc(alt)}" src="data:image/png;base64,{encoded}">'


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def page(title: str, subtitle: str, sections: Sequence[str], *, banner: str | None = None) -> str:
    """The whole document: CSP, inline style, header, optional warning banner, sections."""
    warn = f'<div class="banner">{esc(banner)}</div>' if banner else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n"
        f'<body><header><h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div></header>{warn}\n'
        "<main>\n" + "\n".join(sections) + "\n</main></body></html>\n"
    )
