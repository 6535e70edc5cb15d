"""The HTML report opens in headless Chromium, plotly renders the Pareto plots and the trial
history from the plotly.js written beside the page (fetching nothing from the network), no two
labels overlap (their laid-out boxes, read from the page's SVG), the chosen best is marked (a
star on every plot, one annotation, the starred table row) and a page without its script says
so in place of the plots."""

from __future__ import annotations

import io
import itertools
import json
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


#: a clustered search-like report: an unrecovered step far below the budget, four points
#: within 1% of each other (their labels overlapped when drawn on the points), a noisy timing
ROWS = [
    {"step": "original", "format": "torch", "backend": "torch", "accuracy": 97.5,
     "latency_p50_ms": 10.0, "size_mb": 4.0},
    {"step": "1:prune.structured", "format": "torch", "backend": "torch", "accuracy": 75.0,
     "latency_p50_ms": 8.0, "size_mb": 2.0},
    {"step": "2:onnx", "format": "onnx", "backend": "onnxruntime", "accuracy": 97.4,
     "latency_p50_ms": 4.0, "size_mb": 4.0},
    {"step": "3:onnx.quantize_static", "format": "onnx", "backend": "onnxruntime",
     "accuracy": 97.3, "latency_p50_ms": 2.0, "size_mb": 1.0, "latency_noisy": True,
     "latency_iqr_ms": 0.7},
    {"step": "4:onnx.quantize_dynamic", "format": "onnx", "backend": "onnxruntime",
     "accuracy": 97.35, "latency_p50_ms": 2.02, "size_mb": 1.01},
    {"step": "5:openvino", "format": "openvino", "backend": "openvino", "accuracy": 97.3,
     "latency_p50_ms": 2.01, "size_mb": 1.0},
    {"step": "6:openvino.int8", "format": "openvino", "backend": "openvino", "accuracy": 96.0,
     "latency_p50_ms": 1.5, "size_mb": 1.0},
]
BEST = 4
#: after the plots are drawn: every label's box, each plot's traces, annotations and y range
PROBE = """<script>
window.addEventListener('load', function () { setTimeout(function () {
  var out = {};
  document.querySelectorAll('.js-plotly-plot').forEach(function (gd) {
    var boxes = [];
    gd.querySelectorAll('.annotation-text, .legendtext, .gtitle, .updatemenu-item-text, '
                        + '.g-xtitle text, .g-ytitle text, .textpoint text').forEach(function (el) {
      var r = el.getBoundingClientRect();
      if (r.width > 0 && r.height > 0) {
        boxes.push({cls: el.getAttribute('class'), text: el.textContent,
                    x0: r.left, y0: r.top, x1: r.right, y1: r.bottom});
      }
    });
    out[gd.id] = {boxes: boxes, names: gd.data.map(function (t) { return t.name; }),
                  symbols: gd.data.map(function (t) { return t.marker && t.marker.symbol; }),
                  modes: gd.data.map(function (t) { return t.mode; }),
                  yrange: gd._fullLayout.yaxis.range,
                  annotations: (gd._fullLayout.annotations || []).map(function (a) {
                    return a.text; })};
  });
  var pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
}, 1000); });
</script>"""


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    rows = [dict(r) for r in ROWS]
    for i, r in enumerate(rows[1:]):
        r.update(trial=i, objective=r["latency_p50_ms"], feasible=r["accuracy"] >= 96.5)
    report = mo.Report(rows, environment=describe_environment(),
                       notes={"3:onnx.quantize_static": ["fc kept"]})
    path = tmp_path_factory.mktemp("html") / "report.html"
    report.to_html(path, best=BEST, accuracy_budget=1.0, summary="best: 4:onnx.quantize_dynamic",
                   history={"x": "trial", "y": "objective", "title": "p50 ms"})
    return path


def _probe(page: Path, tmp_path: Path) -> dict:
    """The page's laid-out labels and plot state (PROBE), from a copy beside its script."""
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    res = _chromium(tmp_path, "--dump-dom", "--window-size=1400,1000", probe.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.DOTALL)
    assert m, res.stderr[-2000:]
    import html

    return json.loads(html.unescape(m.group(1)))


def test_dom_has_the_rendered_plots(page, tmp_path):
    res = _chromium(tmp_path, "--dump-dom", page.as_uri())
    dom = res.stdout
    assert res.returncode == 0, res.stderr[-2000:]
    for pid in ("pareto-latency", "pareto-size", "trial-history"):
        # plotly (from the script beside the page) marks the div it drew into: SVG inside
        m = re.search(rf'<div id="{pid}"[^>]*class="[^"]*js-plotly-plot', dom)
        assert m, f"#{pid} was not rendered by plotly"
        nxt = dom.find('class="plotly-graph-div"', m.end())
        assert 'class="main-svg"' in dom[m.end():nxt if nxt > 0 else None]
    assert 'src="plotly-' in dom and "<script" in dom
    assert 'id="plotly-missing"' in dom and 'style="display:none"' in dom  # the script loaded
    assert 'id="comparison"' in dom and "97.50" in dom
    assert "★ best: 4:onnx.quantize_dynamic" in dom  # the one annotation: the best


def test_no_labels_overlap_and_the_best_is_marked(page, tmp_path):
    plots = _probe(page, tmp_path)
    assert set(plots) == {"pareto-latency", "pareto-size", "trial-history"}
    for pid, p in plots.items():
        assert not any("text" in (m or "") for m in p["modes"]), pid  # no text on the points
        boxes = p["boxes"]
        assert len(boxes) >= 6, (pid, boxes)  # title, axis titles, legend, annotation, ...
        for a, b in itertools.combinations(boxes, 2):  # 1 px of anti-aliasing allowed
            overlap = min(a["x1"], b["x1"]) - max(a["x0"], b["x0"]) > 1 and \
                min(a["y1"], b["y1"]) - max(a["y0"], b["y0"]) > 1
            assert not overlap, (pid, a, b)
        # the best: a star trace, and the one annotation names it
        at = p["names"].index("★ best")
        assert p["symbols"][at] == "star"
        assert p["annotations"] == ["★ best: 4:onnx.quantize_dynamic"], pid
    # the accuracy axes are fitted to the points that matter: the unrecovered step (75.0) is
    # below them (a button shows it), the budget line (96.5) inside
    for pid in ("pareto-latency", "pareto-size"):
        lo, hi = plots[pid]["yrange"]
        assert 75.0 < lo < 96.0 and 97.5 < hi < 98.5, (pid, lo, hi)
        assert any(b["text"].startswith("all points (+1") for b in plots[pid]["boxes"])
        assert any(b["text"] == "log x" for b in plots[pid]["boxes"])
    assert "best so far" in plots["trial-history"]["names"]


def test_a_page_without_its_script_says_so(page, tmp_path):
    alone = tmp_path / "alone" / "report.html"
    alone.parent.mkdir()
    shutil.copy(page, alone)  # shared without plotly-*.min.js
    dom = _chromium(tmp_path, "--dump-dom", alone.as_uri()).stdout
    assert re.search(r'id="plotly-missing"[^>]*style="display: block;?"', dom), \
        dom[dom.find("plotly-missing") - 200:][:600]
    assert 'id="comparison"' in dom  # the tables stand without it


def test_screenshot_shows_the_plots_and_the_best_star(page, tmp_path):
    png = tmp_path / "shot.png"
    res = _chromium(tmp_path, f"--screenshot={png}", "--window-size=1400,1600",
                    "--hide-scrollbars", page.as_uri())
    assert png.exists(), res.stderr[-2000:]
    try:
        from PIL import Image
    except ImportError:  # a blank 1400x1600 PNG compresses to a few kB; this page to ~150 kB
        assert png.stat().st_size > 50_000
        return

    img = Image.open(io.BytesIO(png.read_bytes())).convert("RGB")
    assert img.size == (1400, 1600)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # a table, text and plot, not one colour
    # the plot region (below the summary and the table) holds the front's blue and the gold
    # of the best's star
    lower = img.crop((0, 600, 1400, 1600)).getcolors(maxcolors=1 << 20)
    blue = sum(n for n, (r, g, b) in lower if b > 150 and r < 80 and 90 < g < 150)
    gold = sum(n for n, (r, g, b) in lower if r > 220 and 150 < g < 200 and b < 60)
    assert blue > 100 and gold > 100, (blue, gold)
