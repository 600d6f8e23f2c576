"""The kept-token page: wraps between tokens, explains its rows; checked in headless Chromium (slow)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from sttabt.visualize import kept_tokens_html, write_page

WIDTH, HEIGHT = 1400, 1000


def _page(path: Path, n_tokens: int = 300, layers: int = 6, script: str = "") -> None:
    rng = random.Random(0)
    words = ["economy", "growth", "the", "bank", "said", "##s", "rates", "market", ",", ".", "shares"]
    tokens = ["[CLS]"] + [rng.choice(words) for _ in range(n_tokens - 2)] + ["[SEP]"]
    sets, current = [], [True] * n_tokens
    for _ in range(layers):
        current = [flag and (i == 0 or rng.random() < 0.6) for i, flag in enumerate(current)]
        sets.append(current)
    sets.append([i == 0 for i in range(n_tokens)])
    sections = [kept_tokens_html(tokens, sets, "abt (keep 0.3)", "prediction: business")]
    rows = [{"method": "dense", "accuracy %": "93.92"}, {"method": "ABT k=0.3", "accuracy %": "92.79"}]
    write_page(path, "kept tokens", sections, rows, intro="What the table shows: a test line.")
    if script:
        path.write_text(path.read_text().replace("</body>", f"<script>{script}</script></body>"))


def test_token_spans_are_separated_so_rows_wrap(tmp_path):
    _page(tmp_path / "page.html")
    text = (tmp_path / "page.html").read_text()
    assert "</span><span" not in text  # no two token spans glued together: the browser may break between
    assert text.count('<div class="toks">') == 1 + 6 + 1  # layers read, S_0..S_5, out
    assert "Row <b>layers read</b>: each token shaded by how many of the 6 layers read it" in text
    assert "What the table shows: a test line." in text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _run_chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars",
        ]  # fmt: skip
        return subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_page_fits_1400_pixels_in_headless_chromium(tmp_path):
    """The page's content is no wider than the window (it wraps), and a screenshot renders."""
    if _chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    probe = "document.body.setAttribute('data-scroll-width', document.documentElement.scrollWidth)"
    page = tmp_path / "page.html"
    _page(page, script=probe)
    dom = _run_chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    width = int(re.search(r'data-scroll-width="(\d+)"', dom.stdout).group(1))
    assert width <= WIDTH, f"the page is {width} px wide: its rows do not wrap"

    shot = tmp_path / "page.png"
    done = _run_chromium(f"--screenshot={shot}", page.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (WIDTH, HEIGHT)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16) or []
    kept_blue = sum(count for count, (r, g, b) in colours if (r, g, b) == (43, 123, 186))
    assert kept_blue > 2000  # the kept-token rows are on screen, not pushed off to the right
