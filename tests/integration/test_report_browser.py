"""The HTML report opens in headless Chromium, plotly renders the Pareto plots, and the page
fetches nothing from the network (the plot renders with networking disabled)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import modelopt_core as mo
from modelopt_core.environment import describe_environment

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and Path(p).exists()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="Chromium not installed: apt-get install chromium")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    report = mo.Report([
        {"step": "original", "format": "torch", "backend": "torch", "accuracy": 97.5,
         "latency_p50_ms": 10.0, "size_mb": 4.0},
        {"step": "1:onnx", "format": "onnx", "backend": "onnxruntime", "accuracy": 97.4,
         "latency_p50_ms": 4.0, "size_mb": 4.0},
        {"step": "2:onnx.quantize_static", "format": "onnx", "backend": "onnxruntime",
         "accuracy": 96.0, "latency_p50_ms": 2.0, "size_mb": 1.0},
    ], environment=describe_environment(), notes={"2:onnx.quantize_static": ["fc kept"]})
    path = tmp_path_factory.mktemp("html") / "report.html"
    report.to_html(path)
    return path


def test_dom_has_the_rendered_plots(page, tmp_path):
    res = _chromium(tmp_path, "--dump-dom", page.as_uri())
    dom = res.stdout
    assert res.returncode == 0, res.stderr[-2000:]
    for pid in ("pareto-latency", "pareto-size"):
        # plotly marks the div it drew into and puts its SVG inside
        m = re.search(rf'<div id="{pid}"[^>]*class="[^"]*js-plotly-plot', dom)
        assert m, f"#{pid} was not rendered by plotly"
        nxt = dom.find('<div id="pareto-', m.end())
        assert 'class="main-svg"' in dom[m.end():nxt if nxt > 0 else None]
    # the point labels are drawn as SVG text
    assert "2:onnx.quantize_static / onnxruntime" in dom
    assert 'id="comparison"' in dom and "97.50" in dom


def test_screenshot_is_not_blank(page, tmp_path):
    png = tmp_path / "shot.png"
    res = _chromium(tmp_path, f"--screenshot={png}", "--window-size=1400,1000",
                    "--hide-scrollbars", page.as_uri())
    assert png.exists(), res.stderr[-2000:]
    try:
        from PIL import Image
    except ImportError:  # a blank 1400x1000 PNG compresses to a few kB; this page to ~80 kB
        assert png.stat().st_size > 30_000
        return

    img = Image.open(io.BytesIO(png.read_bytes())).convert("RGB")
    assert img.size == (1400, 1000)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # a table, text and plot, not one colour
    # the plot region (below the table) holds plot colours: the front's blue
    lower = img.crop((0, 300, 1400, 1000))
    blue = sum(n for n, (r, g, b) in lower.getcolors(maxcolors=1 << 20)
               if b > 150 and r < 80 and 90 < g < 150)
    assert blue > 100
