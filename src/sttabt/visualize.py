"""A self-contained HTML page that shows which tokens each layer keeps, for one or more examples."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from sttabt.utils import atomic_write_text

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;max-width:70rem;color:#222}
h1{font-size:1.3rem} h2{font-size:1.05rem;margin-top:1.6rem} p{font-size:14px}
.row{display:grid;grid-template-columns:7.5rem minmax(0,1fr);margin:.35rem 0;line-height:1.9}
.lbl{font:12px monospace;color:#555;padding-top:.2rem} .toks{overflow-wrap:anywhere}
.t{padding:1px 2px;border-radius:3px;font-size:13px}
.note{font-size:13px;color:#444;max-width:60rem}
.k{background:#2b7bba;color:#fff} .d{background:#eee;color:#bbb}
.legend span{margin-right:1rem} table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:2px 8px;font-size:13px;text-align:right}
.heat{padding:1px 2px;border-radius:3px;font-size:13px}
"""


def kept_tokens_html(
    tokens: Sequence[str],
    key_sets: Sequence[Sequence[bool]],
    title: str,
    caption: str = "",
) -> str:
    """HTML fragment: one line per layer l = 0..L (S_l), kept tokens highlighted, plus a survival heatmap.

    ``key_sets[l][i]`` says whether token ``i`` is in S_l (the set layer l reads; S_L = the readout).
    """
    num_layers = len(key_sets) - 1
    parts = [f"<h2>{html.escape(title)}</h2>"]
    if caption:
        parts.append(f"<p>{html.escape(caption)}</p>")
    # Survival depth: how many layers read each token. Darker = needed deeper into the network.
    depth = [sum(1 for layer in range(num_layers) if key_sets[layer][i]) for i in range(len(tokens))]
    spans = []
    for token, d in zip(tokens, depth, strict=True):
        alpha = d / max(num_layers, 1)
        fg = "#fff" if alpha > 0.5 else "#222"
        spans.append(
            f'<span class="heat" style="background:rgba(43,123,186,{alpha:.2f});color:{fg}" '
            f'title="read by {d} of {num_layers} layers">{html.escape(token)}</span>'
        )
    parts.append(
        f'<p class="note">Row <b>layers read</b>: each token shaded by how many of the {num_layers} layers '
        f"read it (its key/value is in S_l): white = none (removed before layer 0), dark blue = all "
        f"{num_layers}. Rows S_0 … S_{num_layers - 1}: the tokens layer l reads, with their count.</p>"
    )
    parts.append(_row("layers read", spans))
    for layer, kept in enumerate(key_sets):
        count = sum(1 for flag in kept[: len(tokens)] if flag)
        label = f"S_{layer} ({count})" if layer < num_layers else f"out ({count})"
        cells = [
            f'<span class="t {"k" if kept[i] else "d"}">{html.escape(tok)}</span>'
            for i, tok in enumerate(tokens)
        ]
        parts.append(_row(label, cells))
    return "\n".join(parts)


def _row(label: str, spans: Sequence[str]) -> str:
    """One labelled row; the spans are separated by spaces so that the browser can wrap between tokens."""
    head = f'<div class="row"><span class="lbl">{html.escape(label)}</span>'
    return f'{head}<div class="toks">{" ".join(spans)}</div></div>'


def write_page(
    path: str | Path,
    title: str,
    sections: Sequence[str],
    summary_rows: Sequence[dict] = (),
    intro: str = "",
) -> None:
    """Write a complete HTML page: title, ``intro`` paragraph, summary table, fragments (atomically)."""
    table = ""
    if summary_rows:
        headers = list(summary_rows[0])
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(row.get(h, '')))}</td>" for h in headers) + "</tr>"
            for row in summary_rows
        )
        table = f"<table><tr>{head}</tr>{body}</table>"
    legend = (
        '<p class="legend"><span class="t k">kept</span> <span class="t d">removed</span> '
        "Line S_l lists the tokens layer l reads (keys/values); "
        "the last line is what the classifier reads.</p>"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + (f'<p class="note">{html.escape(intro)}</p>' if intro else "")
        + f"{table}{legend}"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    atomic_write_text(path, page)


# ------------------------------------------------------------------------------------------------ images
#: How much of a dropped patch's brightness is left in the picture, and the tint added to it (so that
#: a dropped black patch still shows).
DIMMED = 0.3
DROPPED_TINT = (0.35, 0.08, 0.08)


def patch_mask_image(
    kept: Sequence[bool], grid: tuple[int, int], patch: tuple[int, int], prefix: int
) -> list[list[bool]]:
    """Pixel-level kept mask ``(H, W)`` for one image: token ``prefix + r * grid_w + c`` is patch (r, c)."""
    rows, cols = grid
    height, width = rows * patch[0], cols * patch[1]
    mask = [[False] * width for _ in range(height)]
    for index in range(rows * cols):
        if kept[prefix + index]:
            r, c = divmod(index, cols)
            for y in range(r * patch[0], (r + 1) * patch[0]):
                mask[y][c * patch[1] : (c + 1) * patch[1]] = [True] * patch[1]
    return mask


def kept_patches_png(
    path: str | Path,
    images,
    key_sets: Sequence,
    *,
    patch: tuple[int, int],
    prefix: int,
    row_titles: Sequence[str] = (),
    title: str = "",
) -> None:
    """A PNG grid, one row per image and one column per layer l = 0..L-1 (the patches S_l reads); patches
    that a layer no longer reads are dimmed and tinted red. ``images`` is ``(N, C, H, W)`` in [0, 1]
    (C = 1 or 3); ``key_sets[l]`` is ``(N, T)`` bool. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sttabt.utils import save_figure

    pictures = np.asarray(images, dtype=np.float32)
    count, channels, height, width = pictures.shape
    grid = (height // patch[0], width // patch[1])
    layers = len(key_sets) - 1
    tint = np.asarray(DROPPED_TINT, dtype=np.float32)
    fig, axes = plt.subplots(count, layers + 1, figsize=(1.3 * (layers + 1), 1.45 * count), squeeze=False)
    for i in range(count):
        rgb = np.repeat(pictures[i], 3, axis=0) if channels == 1 else pictures[i]
        rgb = rgb.transpose(1, 2, 0)[: grid[0] * patch[0], : grid[1] * patch[1]]
        axes[i][0].imshow(rgb, interpolation="nearest")
        axes[i][0].set_title(row_titles[i] if i < len(row_titles) else "input", fontsize=7)
        for layer in range(layers):
            kept = [bool(v) for v in np.asarray(key_sets[layer][i])]
            mask = np.asarray(patch_mask_image(kept, grid, patch, prefix), dtype=np.float32)[..., None]
            shown = rgb * (mask + (1 - mask) * DIMMED) + (1 - mask) * tint
            ax = axes[i][layer + 1]
            ax.imshow(np.clip(shown, 0, 1), interpolation="nearest")
            if i == 0:
                ax.set_title(f"layer {layer}", fontsize=7)
            ax.set_xlabel(f"{sum(kept[prefix:])}/{grid[0] * grid[1]}", fontsize=6, labelpad=1)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, "png", dpi=110)
    plt.close(fig)
