"""The Markdown report (``report.md``): the same tables as the HTML page, as Markdown."""

from __future__ import annotations

from typing import Any

from robustprune.study.report.tables import Table


def _esc(text: str) -> str:
    return text.replace("|", "\\|")


def table_markdown(t: Table, level: str = "###") -> str:
    lines = [f"{level} {t.title}", "", "| " + " | ".join(_esc(h) for h in t.header) + " |",
             "|" + "---|" * len(t.header)]
    for row in t.rows:
        cells = []
        for c in row:
            txt = _esc(c.text)
            if c.cls == "gain" and txt:
                txt = f"**{txt}**"
            elif c.cls == "confounded" and txt:
                txt = f"_{txt}_"
            cells.append(txt)
        lines.append("| " + " | ".join(cells) + " |")
    if t.notes:
        for n in t.notes:
            lines += ["", _esc(n)]
    lines.append("")
    return "\n".join(lines)


def sections_markdown(sections: list[tuple[str, str, list[Table]]]) -> list[str]:
    out: list[str] = []
    for title, intro, tables in sections:
        if not tables:
            continue
        out += [f"## {title}", ""]
        if intro:
            out += [intro, ""]
        out += [table_markdown(t) for t in tables]
    return out


def provenance_markdown(meta: dict[str, Any]) -> list[str]:
    command = meta.get("command")
    return ["Command: `" + " ".join(str(c) for c in command) + "`"] if command else []
