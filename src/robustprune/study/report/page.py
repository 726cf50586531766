"""The self-contained HTML page (``report.html``): every figure embedded as a base64 PNG, no external resource.

A small script checks on load that every image decoded and sets ``document.title`` (and the empty status line) to
``OK ...`` or ``ERR ...`` (the test reads it from Chromium's ``--dump-dom``); without JavaScript nothing is shown.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

from robustprune.study.report.tables import Table

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;
color:#222;line-height:1.4}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0 .3em;font-size:.86em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td.l,th.l{text-align:left}
.gain{font-weight:bold;color:#0a6b1f}.loss{color:#8a1c1c;font-weight:bold}.fail{color:#b00;font-weight:bold}
.confounded{color:#777;font-style:italic}.flag{color:#8a4b00}
img{max-width:100%;height:auto;border:1px solid #eee}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.7em;overflow:auto;font-size:.82em;max-height:40em}
.note{color:#555;font-size:.9em}ul.fn{color:#555;font-size:.85em;margin:.2em 0 1.2em;padding-left:1.2em}
"""

CHECK_JS = """
(function(){
  var errors=[];
  window.addEventListener('error',function(e){errors.push(String(e.message||e.type));},true);
  window.addEventListener('load',function(){
    var imgs=document.getElementsByTagName('img'),bad=[];
    for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth<1){bad.push(imgs[i].alt||('img'+i));}}
    var msg=(bad.length||errors.length)?('ERR '+bad.length+' figure(s) failed: '+bad.join('; ')+
      (errors.length?' | JS errors: '+errors.join('; '):'')):('OK '+imgs.length+' figures rendered');
    document.title=msg;
    var s=document.getElementById('render-status');if(s){s.textContent=msg;}
  });
})();
"""


def e(x: Any) -> str:
    return html.escape(str(x))


def img(png: bytes, alt: str) -> str:
    return f'<p><img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></p>'


def table_html(t: Table, level: str = "h3") -> str:
    parts = [f"<{level}>{e(t.title)}</{level}>", "<table><tr>"
             + "".join(f"<th{' class=l' if i < t.left_columns else ''}>{e(h)}</th>" for i, h in enumerate(t.header))
             + "</tr>"]
    for row in t.rows:
        tds = []
        for i, c in enumerate(row):
            cls = " ".join(x for x in (c.cls, "l" if (c.left or i < t.left_columns) else None) if x)
            attrs = (f' class="{cls}"' if cls else "") + (f' title="{e(c.title)}"' if c.title else "")
            tds.append(f"<td{attrs}>{e(c.text)}</td>")
        parts.append("<tr>" + "".join(tds) + "</tr>")
    parts.append("</table>")
    if t.notes:
        parts.append("<ul class=fn>" + "".join(f"<li>{e(n)}</li>" for n in t.notes) + "</ul>")
    return "\n".join(parts)


def page(out: Path, *, title: str, blocks: list[str]) -> Path:
    doc = ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
           f"<title>{e(title)}</title><style>{CSS}</style><script>{CHECK_JS}</script></head>"
           "<body>\n" + "\n".join(blocks) + "\n</body></html>\n")
    path = out / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(path)
    return path


def provenance_html(out: Path, meta: dict[str, Any], spec: dict[str, Any], code_versions: list[str]) -> list[str]:
    command = meta.get("command")
    started = meta.get("started_at")
    parts = ["<h2>Provenance</h2>", "<p>Command:</p><pre>"
             + (e(" ".join(str(c) for c in command)) if command else "(not recorded)") + "</pre>"]
    if started:
        parts.append(f"<p>Started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(float(started)))}; code "
                     f"versions {e(code_versions)}.</p>")
    from robustprune.study.report.markdown import layouts_text

    layouts = layouts_text(meta)
    if layouts:
        parts.append(f"<p>{e(layouts)}</p>")
    cfg_path = out / "study.json"
    cfg_text = cfg_path.read_text() if cfg_path.exists() else json.dumps(spec, indent=2)
    parts.append("<p>Config (<code>study.json</code>):</p><pre>" + e(cfg_text) + "</pre>")
    return parts
