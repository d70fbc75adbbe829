"""The HTML report in headless Chromium: it renders on a phone and on a desktop, every chart
image loads, nothing logs an error, and nothing scrolls sideways on a phone."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import pytest

from agent.finops.charts import CHARTS
from tests.finops.browser import Chromium
from tests.support.binaries import require_binary

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    browser = Chromium(require_binary("chromium"))
    yield browser
    browser.stop()


def _not_blank(png: bytes) -> bool:
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    return bool(pixels.std() > 0.01)


@pytest.fixture(params=["fleet", "simulated-week"])
def report_dir(request: pytest.FixtureRequest) -> Path:
    """The fleet's report (Prometheus) and the demo's (its simulated week, with the
    reclaimable table): both must fit."""
    name = "fleet_report_dir" if request.param == "fleet" else "simulated_week_report_dir"
    folder: Path = request.getfixturevalue(name)
    return folder


@pytest.mark.parametrize(("width", "mobile"), [(390, True), (1280, False)],
                         ids=["phone", "laptop"])
def test_report_renders_and_every_table_fits(chromium: Chromium, report_dir: Path,
                                             width: int, mobile: bool) -> None:
    page = chromium.open((report_dir / "report.html").as_uri(), width=width, mobile=mobile)
    # Kept beside the report for a person to look at (the lead does, at both widths).
    shot = report_dir / f"screenshot-{width}.png"
    shot.write_bytes(page.screenshot)
    assert page.errors == []
    assert [image["chart"] for image in page.images] == list(CHARTS)
    for image in page.images:
        assert image["complete"] and image["width"] > 300 and image["height"] > 150, image
        assert 0 < image["shown"] <= width, image
    # Neither the page nor any table scrolls sideways: on a laptop the tables fit the
    # page, on a phone each row is a card.
    assert page.scroll_width <= page.viewport_width
    assert len(page.tables) >= 6
    wide = [t for t in page.tables if t["scroll"] > t["client"]]
    assert wide == [], wide
    assert page.screenshot.startswith(b"\x89PNG") and _not_blank(page.screenshot)


def test_the_check_catches_a_broken_page(chromium: Chromium, tmp_path: Path) -> None:
    """The harness must be able to fail: a missing image, a script error, a wide table."""
    page_path = tmp_path / "broken.html"
    page_path.write_text(
        '<!doctype html><html><body><img data-chart="x" src="data:image/png;base64,AAAA">'
        '<img src="missing.png"><table style="width:2000px"><tr><td>x</td></tr></table>'
        "<script>console.error('boom'); notDefined();</script></body></html>")
    page = chromium.open(page_path.as_uri(), width=390, mobile=True)
    assert any("boom" in e for e in page.errors)
    assert any("notDefined" in e for e in page.errors)
    assert any("ERR_FILE_NOT_FOUND" in e for e in page.errors)
    assert all(image["width"] == 0 for image in page.images)
    assert page.scroll_width > page.viewport_width
    boxed = tmp_path / "boxed.html"
    boxed.write_text('<!doctype html><html><body><div class="table-wrap" style="overflow-x:'
                     'auto"><table style="width:2000px"><tr><td>x</td></tr></table></div>'
                     "</body></html>")
    page = chromium.open(boxed.as_uri(), width=1280)
    assert page.scroll_width <= page.viewport_width  # the page does not scroll ...
    assert [t["scroll"] > t["client"] for t in page.tables] == [True]  # ... its table does


def test_html_is_self_contained(report_dir: Path) -> None:
    text = (report_dir / "report.html").read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    assert text.count('src="data:image/png;base64,') == len(CHARTS)
    # Nothing to fetch: every src is embedded, no stylesheet, script, font or CSS url().
    assert re.findall(r'src="([a-z]+):', text) == ["data"] * len(CHARTS)
    for reference in ("<script", "<link", "url(", "@import", "href="):
        assert reference not in text
