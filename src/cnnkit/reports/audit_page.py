"""``audit.html``: a data audit as one self-contained page (numpy and Pillow only): a summary,
then a grid of thumbnails a finding (duplicate groups, suspected label errors, outliers), each
image captioned with its file, split and label. Thumbnails are inline PNGs, so the page opens
from disk anywhere, with nothing fetched."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from cnnkit.fileio import atomic_write_text

THUMBNAIL = 64  # pixels a side: enough to see a duplicate or a wrong label
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; }
td, th { padding: 0.2rem 0.6rem; border-bottom: 1px solid #ddd; text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 0.6rem; }
.group { border: 1px solid #ccc; border-radius: 6px; padding: 0.4rem; }
.group { display: flex; gap: 0.4rem; flex-wrap: wrap; }
.group .tag { width: 100%; font-weight: 600; font-size: 12px; }
figure { margin: 0; width: 96px; font-size: 11px; word-break: break-all; }
figure img { width: 96px; height: 96px; image-rendering: pixelated; display: block; }
.none { color: #777; font-style: italic; }
"""


def thumbnail_url(image: np.ndarray) -> str:
    """A ``data:`` URL of a PNG thumbnail of a uint8 ``(H, W, 3)`` image."""
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_audit_page(
    path: str | os.PathLike, audit: dict[str, Any], image: Callable[[int], np.ndarray]
) -> None:
    """Write the page for ``audit`` (``runs.audit``'s result); ``image(index)`` gives an image's pixels."""
    sections = [
        f"<h1>Data audit: {_text(audit['data'])}</h1>",
        _summary(audit),
        _duplicates(audit["duplicates"], image),
        _images_section(
            "label-issues",
            "Suspected label errors",
            audit.get("label_issues"),
            image,
            lambda row: (
                f"labelled {row['given']}, looks like {row['suggested']} "
                f"(p of its label {row['self_confidence']:.2f})"
            ),
            audit.get("label_issues_note"),
        ),
        _images_section(
            "outliers",
            "Outliers: images no class claims",
            audit.get("outliers"),
            image,
            lambda row: f"labelled {row['label']} (score {row['score']:.2f})",
            audit.get("label_issues_note"),
        ),
        _counts(audit),
    ]
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>cnnkit audit</title><style>{_STYLE}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    atomic_write_text(path, page)


def duplicate_summary(groups: list[dict[str, Any]]) -> str:
    """``83 group(s): 59 within class, 24 across classes, 29 across splits`` (a group can be both
    across classes and across splits)."""
    counts = [
        f"{sum(relation in group['relations'] for group in groups)} {relation}"
        for relation in ("within class", "across classes", "across splits")
    ]
    return f"{len(groups):,} group(s): " + ", ".join(counts)


def _summary(audit: dict[str, Any]) -> str:
    rows = [
        (
            "images",
            f"{audit['images']:,} ("
            + ", ".join(f"{split} {count:,}" for split, count in audit["splits"].items())
            + ")",
        ),
        ("duplicates", duplicate_summary(audit["duplicates"])),
        ("suspected label errors", _count(audit.get("label_issues"))),
        ("outliers", _count(audit.get("outliers"))),
        ("in exclude.txt", f"{audit.get('excluded', 0):,}"),
        ("skipped files", f"{audit.get('skipped', 0):,}"),
    ]
    cells = "".join(f"<tr><th>{_text(name)}</th><td>{_text(value)}</td></tr>" for name, value in rows)
    return f"<section id='summary'><h2>Summary</h2><table>{cells}</table></section>"


def _duplicates(groups: list[dict[str, Any]], image: Callable[[int], np.ndarray]) -> str:
    if not groups:
        return (
            "<section id='duplicates'><h2>Duplicates</h2><p class='none'>No duplicates found.</p></section>"
        )
    blocks = []
    for group in groups:
        tag = f"{group['kind']} duplicates, {', '.join(group['relations'])}"
        figures = "".join(_figure(member, image, _label_text(member)) for member in group["members"])
        blocks.append(f"<div class='group'><span class='tag'>{_text(tag)}</span>{figures}</div>")
    heading = f"<h2>Duplicates ({len(groups):,} groups)</h2>"
    return f"<section id='duplicates'>{heading}<div class='grid'>{''.join(blocks)}</div></section>"


def _images_section(
    anchor: str,
    title: str,
    rows: list[dict[str, Any]] | None,
    image: Callable[[int], np.ndarray],
    caption: Callable[[dict[str, Any]], str],
    note: str | None,
) -> str:
    if rows is None:
        body = f"<p class='none'>{_text(note or 'Not searched.')}</p>"
    elif not rows:
        body = "<p class='none'>None found.</p>"
    else:
        body = "<div class='grid'>" + "".join(_figure(row, image, caption(row)) for row in rows) + "</div>"
    count = f" ({len(rows):,})" if rows else ""
    return f"<section id='{anchor}'><h2>{_text(title)}{count}</h2>{body}</section>"


def _counts(audit: dict[str, Any]) -> str:
    counts = audit.get("class_counts") or {}
    cells = "".join(f"<tr><td>{_text(name)}</td><td>{count:,}</td></tr>" for name, count in counts.items())
    ratio = audit.get("imbalance_ratio")
    note = f"<p>Imbalance ratio (largest class over smallest): {ratio}</p>" if ratio is not None else ""
    table = f"<table><tr><th>class</th><th>images</th></tr>{cells}</table>"
    return f"<section id='classes'><h2>Classes</h2>{table}{note}</section>"


def _figure(row: dict[str, Any], image: Callable[[int], np.ndarray], caption: str) -> str:
    source = thumbnail_url(image(row["index"]))
    where = f"{row.get('name') or '#' + str(row['index'])} [{row.get('split', '')}]"
    return (
        f"<figure><img src='{source}' alt='{_text(where)}'>"
        f"<figcaption>{_text(where)}<br>{_text(caption)}</figcaption></figure>"
    )


def _label_text(member: dict[str, Any]) -> str:
    label = member.get("label")
    return ", ".join(label) if isinstance(label, list) else str(label)


def _count(rows: list | None) -> str:
    return "not searched" if rows is None else f"{len(rows):,}"


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)
