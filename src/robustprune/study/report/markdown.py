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


def layouts_text(meta: dict[str, Any]) -> str | None:
    """``Memory layout (decided once for this study and used by every cell): ...`` from the meta ``layouts``."""
    layouts = meta.get("layouts") or {}
    if not layouts:
        return None
    parts = []
    for key, cl in sorted(layouts.items()):
        device, dataset, arch = (key.split("|") + ["?", "?"])[:3]
        parts.append(f"{dataset}/{arch} on {device}: {'channels_last' if cl else 'NCHW'}")
    return ("Memory layout (decided once for this study, stored, and used by every cell, task and rerun; the "
            "numbers differ by float rounding between layouts): " + "; ".join(parts))


def provenance_markdown(meta: dict[str, Any]) -> list[str]:
    command = meta.get("command")
    out = ["Command: `" + " ".join(str(c) for c in command) + "`"] if command else []
    layouts = layouts_text(meta)
    return out + (([""] if out else []) + [layouts] if layouts else [])
