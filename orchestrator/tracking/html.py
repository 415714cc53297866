"""report.html: the comparison report as one self-contained page (plots inline, sortable tables, each run
linked to the MLflow UI when the tracking URI is a server), from the same sections as report.md."""

from __future__ import annotations

import base64
import html
import math
import re
import secrets
from pathlib import Path

STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3;cursor:pointer;user-select:none}th:after{content:" \\2195";color:#aaa}
td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}code{background:#f3f3f3;padding:0 3px}"""

# header click: sort by that column (numbers by data-v, else text), again: reverse. On load: count the plots
# that decoded (data-images="loaded/total"); with #check, sort every table by its first column, descending.
SCRIPT = """function sortTable(t,col,desc){const b=t.tBodies[0];const rows=[...b.rows];
const key=r=>{const c=r.cells[col];const v=c.dataset.v;return v!==undefined&&v!==''?parseFloat(v):c.textContent};
rows.sort((x,y)=>{const a=key(x),c=key(y);const r=(typeof a==='number'&&typeof c==='number')?a-c:String(a).localeCompare(String(c));return desc?-r:r});
rows.forEach(r=>b.appendChild(r));t.dataset.sorted=col+(desc?'d':'a')}
document.querySelectorAll('table.sortable').forEach(t=>t.querySelectorAll('th').forEach((th,i)=>th.addEventListener('click',()=>{
sortTable(t,i,t.dataset.sorted===i+'a')})));
window.addEventListener('load',()=>{const imgs=[...document.images];
document.body.dataset.images=imgs.filter(i=>i.complete&&i.naturalWidth>0).length+'/'+imgs.length;
if(location.hash==='#check'){document.querySelectorAll('table.sortable').forEach(t=>sortTable(t,0,true))}});"""


_LEADING_NUMBER = re.compile(r"\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?:\s|$)")


def _value(v) -> str:
    """data-v: the number a cell sorts by ('' for text); "1.94 ± 0.04" sorts by its mean."""
    if isinstance(v, str) and (m := _LEADING_NUMBER.match(v)):
        v = float(m.group(1))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return ""
    return repr(float(v))


def html_table(headers: list[str], rows: list[list]) -> str:
    """A sortable table; a compare.Link cell becomes a link."""
    from .compare import Link, _fmt

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            text = html.escape(_fmt(v))
            if isinstance(v, Link):
                text = f'<a href="{html.escape(v.href)}">{text}</a>'
            cells.append(f'<td data-v="{_value(v)}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _inline(text: str) -> str:
    """Markdown emphasis and code in a paragraph -> HTML (escaped first)."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", text)


def to_html(document: str, out_dir: Path, tables: dict[str, str], plots: dict[str, str]) -> str:
    """compare.markdown(...) rendered with placeholder tables -> a page. Every line of text is escaped (run
    names, params and tags come from whoever can write to the MLflow experiment): headings, paragraphs, and
    a line that is exactly one of ``tables``' unguessable placeholders becomes that table's HTML; a plot line
    ``![title](file)`` is inlined from ``out_dir`` only when it is one of ``plots`` (the files written here)."""
    known = {f"![{title}]({name})": (title, name) for title, name in plots.items()}
    body, title = [], "MoSS comparison"
    for line in document.split("\n"):
        if not line.strip():
            continue
        if line in tables:
            body.append(tables[line])
        elif line in known:
            alt, name = known[line]
            data = base64.b64encode((out_dir / name).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(alt)}</figcaption></figure>")
        elif line.startswith("# "):
            title = line[2:]
            body.append(f"<h1>{html.escape(title)}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        else:
            body.append(f"<p>{_inline(line)}</p>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}<script>{SCRIPT}</script></body></html>\n")


def write_html(c, plots: dict[str, str], out_dir: Path, ui: str | None) -> Path:
    from .compare import markdown

    nonce, tables = secrets.token_hex(16), {}

    def table(headers, rows) -> str:  # the report's tables, kept out of the text until the page is built
        key = f"@@table-{nonce}-{len(tables)}@@"
        tables[key] = html_table(headers, rows)
        return key

    path = out_dir / "report.html"
    path.write_text(to_html(markdown(c, plots, table=table, ui=ui), out_dir, tables, plots))
    return path
