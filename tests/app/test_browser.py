"""The app in a real browser: `curator app` on a free local port against the demo fixture
store, Debian's chromium driven by the `playwright` package (never its own browser
download). Opens each page, clicks through a selection to one sample and to an export,
saves screenshots, and fails on any Streamlit exception box.

Run with ``pytest -m browser``; screenshots go to ``$CURATOR_SCREENSHOT_DIR`` (default: a
temporary folder, printed at the end).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from curator.store import Store, browse_selections, browse_versions
from curator.store.datasets import load_samples
from curator.store.selection_rows import selection_sample_ids

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Debian's chromium at /usr/bin/chromium "
                              "(apt-get install -y chromium; .ci/run does this)"),
]


@pytest.fixture
def app_url(demo_store, tmp_path, free_port):
    """`curator app` on a free port; always stopped (with its process group) afterwards."""
    port = free_port()
    # this checkout's curator (an installed `curator` may be another checkout's code)
    cmd = [sys.executable, "-m", "curator.cli", "app", "--store", str(demo_store),
           "--port", str(port)]
    log = (tmp_path / "app.log").open("w")
    env = dict(os.environ, CURATOR_APP_LOCK_TIMEOUT="5",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"curator app exited early:\n"
                                     f"{(tmp_path / 'app.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("curator app did not answer within 90 s")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("CURATOR_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def settle(page, timeout: float = 60) -> None:
    """Wait until the script run finished and the page stopped changing.

    Streamlit marks its root with ``data-test-script-state`` (``initial``, ``running``,
    ``notRunning``, ...); the status widget alone is not enough, because it appears only some
    time after a run starts, so a quick poll can see neither and call a page done that has
    not started yet.
    """
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 3:
        state = page.locator('[data-testid="stApp"]').first.get_attribute(
            "data-test-script-state")
        running = state in (None, "initial", "running", "rerunRequested") or \
            page.locator('[data-testid="stStatusWidget"]').count() > 0 or \
            page.locator('[data-testid="stSkeleton"]').count() > 0
        quiet = 0 if running else quiet + 1
        if time.monotonic() > deadline:
            raise AssertionError(f"the page kept running for too long (script state {state})")
        page.wait_for_timeout(400)
    page.wait_for_timeout(600)  # charts draw after the run ends


def check_no_exception(page, where: str) -> None:
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, f"{where}: {boxes.first.inner_text()[:2000]}"


def open_page(page, url: str, title: str) -> None:
    page.goto(url)
    settle(page)
    page.get_by_role("heading", name=title).first.wait_for(timeout=30_000)
    check_no_exception(page, url)


def shoot(page, folder: Path, name: str, top: bool = True) -> Path:
    if top:
        page.evaluate("document.querySelector('[data-testid=\"stMain\"]')?.scrollTo(0, 0)")
        page.wait_for_timeout(300)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    _shrink(path)
    return path


def _shrink(path: Path, limit: int = 300_000) -> None:
    """Keep screenshots commit-sized: quantise to a palette when a PNG is too big."""
    if path.stat().st_size <= limit:
        return
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    page.get_by_role("combobox", name=label, exact=True).first.click()
    page.get_by_role("option", name=option).first.click()
    settle(page)


def radio(page, option: str) -> None:
    page.locator('[data-testid="stRadio"] label').filter(has_text=option).first.click()
    settle(page)


def metric(page, label: str) -> str:
    """The value of the metric labelled ``label``."""
    exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
    box = page.locator('[data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=exact)).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def click_row(page, key: str, row: int) -> None:
    """Click row ``row`` of the dataframe with widget key ``key`` (a canvas grid: click
    the row's selection cell, left of its first column)."""
    grid = page.locator(f".st-key-{key} [data-testid='stDataFrame']").first
    grid.wait_for()
    grid.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    box = grid.bounding_box()
    header = 35  # px, Streamlit's default row height (header and rows alike)
    page.mouse.click(box["x"] + 14, box["y"] + header + header * row + header / 2)
    settle(page)


def why_line(page) -> str:
    """The why-selected line under the sentence in model terms."""
    return page.locator('[data-testid="stCaptionContainer"]').filter(
        has_text="over the selection's own").first.inner_text()


def ZERO_GAIN(store_path: Path) -> list[str]:  # noqa: N802  (a constant of the fixture)
    """sel-0002's members picked at gain 0, in pick order."""
    return [r[0] for r in Store(store_path).query(
        "SELECT sample_id FROM selection_members WHERE selection_id = 'sel-0002' AND "
        "layer = '' AND gain = 0 ORDER BY rank")]


def test_pages_selection_sample_and_export(app_url, demo_store, shots, tmp_path):
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100},
                                    accept_downloads=True)
            open_page(page, app_url, "curator")
            assert page.get_by_text("Recent runs").count() == 1
            shoot(page, shots, "overview")

            open_page(page, f"{app_url}/versions", "Versions")
            page.get_by_text("matching samples").first.wait_for()
            shoot(page, shots, "versions")
            radio(page, "Diff")
            check_no_exception(page, "versions/diff")
            shoot(page, shots, "versions-diff")

            # favicon: drawn in the browser (data: URL), never fetched from a font host
            icons = page.locator("link[rel*='icon']")
            assert icons.count() and all(
                (icons.nth(i).get_attribute("href") or "").startswith("data:")
                for i in range(icons.count())), "favicon is fetched from a host"

            # a selection, through its members, to one sample
            open_page(page, f"{app_url}/selections", "Selections")
            choose(page, "selection", "sel-0002 · task · delift")
            check_no_exception(page, "selections")
            assert "selection=sel-0002" in page.url
            # zero-gain picks are counted in the header and flagged in the members table
            zero = metric(page, "zero-gain picks")
            assert zero == str(len(ZERO_GAIN(demo_store))), zero
            # at 1,280 px no header value is cut off ("instruc…", "90 of …")
            page.set_viewport_size({"width": 1280, "height": 1100})
            page.wait_for_timeout(500)
            cut = page.evaluate(
                "[...document.querySelectorAll('[data-testid=\"stMetricValue\"] div')]"
                ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)")
            assert not cut, f"truncated at 1280 px: {cut}"
            page.set_viewport_size({"width": 1400, "height": 1100})
            page.wait_for_timeout(300)
            shoot(page, shots, "selections")
            # a click on the first row of the members table opens its sample
            click_row(page, "sel_members_table", 0)
            assert "view=Sample" in page.url, page.url
            check_no_exception(page, "selections/sample")
            page.get_by_text("Why selected").wait_for()
            page.get_by_text("Targets it helps most").wait_for()
            shoot(page, shots, "selections-sample", top=False)
            # a click on a row of the why-selected table opens that target
            before = page.url
            click_row(page, "sel_sample_covers", 0)
            assert page.url != before and "view=Sample" in page.url
            assert metric(page, "in this selection") == "no"  # a target, not a member
            radio(page, "Composition")
            check_no_exception(page, "selections/composition")
            shoot(page, shots, "selections-composition")
            radio(page, "Scores")
            check_no_exception(page, "selections/scores")
            shoot(page, shots, "selections-scores")
            radio(page, "Map")
            check_no_exception(page, "selections/map")
            shoot(page, shots, "selections-map")
            radio(page, "Compare")
            check_no_exception(page, "selections/compare")
            shoot(page, shots, "selections-compare")

            # a deep link to one sample of a selection, and a reload, show that sample
            store = Store(demo_store)
            sample = next(i for i in selection_sample_ids(store, "sel-0001")
                          if i in set(selection_sample_ids(store, "sel-0002")))
            rank = selection_sample_ids(store, "sel-0002").index(sample)
            response = next(s.response for s in load_samples(store, "demo", 1)
                            if s.sample_id == sample)
            open_page(page, f"{app_url}/selections?selection=sel-0002&sample={sample}",
                      "Selections")
            for attempt in ("link", "reload"):
                assert metric(page, "pick") == f"#{rank + 1}", attempt  # 1st pick: #1
                page.get_by_text(response[:40]).first.wait_for()
                assert f"sample={sample}" in page.url
                task_line = why_line(page)
                task_rows = page.get_by_text("Targets it helps most")
                assert task_rows.count() == 1
                if attempt == "link":
                    page.reload()
                    settle(page)
                    check_no_exception(page, "selections/reload")
            # the same sample in the instruction selection: another explanation
            open_page(page, f"{app_url}/selections?selection=sel-0001&sample={sample}",
                      "Selections")
            page.get_by_text("Pool samples it helps most").wait_for()
            instruction_line = why_line(page)
            assert instruction_line != task_line
            assert "targets" in task_line and "pool sample" in instruction_line
            # a zero-gain pick is flagged in the sample view
            zero_id = ZERO_GAIN(demo_store)[0]
            open_page(page, f"{app_url}/selections?selection=sel-0002&sample={zero_id}",
                      "Selections")
            assert metric(page, "marginal gain") == "0"
            page.get_by_text("A zero-gain pick:").first.wait_for()

            open_page(page, f"{app_url}/masks", "Masks")
            page.get_by_text("Layer-wise subsets").wait_for()
            shoot(page, shots, "masks")

            # an export: download the zip, then write one into the store's exports folder
            open_page(page, f"{app_url}/export", "Export")
            choose(page, "selection", "sel-0004")
            page.get_by_role("button", name="Prepare zip").click()
            settle(page)
            check_no_exception(page, "export/prepare")
            with page.expect_download() as info:
                page.get_by_role("button", name="Download sel-0004-jsonl.zip").click()
            zipped = tmp_path / "download.zip"
            info.value.save_as(zipped)
            with zipfile.ZipFile(zipped) as zf:
                names = set(zf.namelist())
            assert {"sel-0004-jsonl/data.jsonl", "sel-0004-jsonl/manifest.json",
                    "sel-0004-jsonl/mask.safetensors"} <= names
            page.get_by_role("button", name="Write export").click()
            settle(page)
            check_no_exception(page, "export/write")
            assert (demo_store / "exports" / "sel-0004-jsonl" / "manifest.json").exists()
            page.get_by_text("written:").wait_for()
            shoot(page, shots, "export")
        finally:
            browser.close()
    print(f"screenshots: {shots}")


def cut_off(page) -> list[str]:
    """Metric values wider than their box (drawn with an ellipsis)."""
    return page.evaluate(
        "[...document.querySelectorAll('[data-testid=\"stMetricValue\"] div')]"
        ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)")


def test_finding_things_at_1280_px(app_url, demo_store, shots):
    """Issue 27 in a browser at 1,280 px: /overview, no cut-off value on any page, the
    member picker after a switch, search and a filter in the URL, arrow keys, Masks < 2 s."""
    from playwright.sync_api import sync_playwright

    store = Store(demo_store)
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            # /overview is the Overview (the menu's name for it), not "Page not found"
            open_page(page, f"{app_url}/overview", "curator")
            assert page.get_by_text("Page not found").count() == 0
            assert page.get_by_text("Recent runs").count() == 1
            assert not cut_off(page), cut_off(page)
            open_page(page, f"{app_url}/versions", "Versions")
            assert not cut_off(page), cut_off(page)
            for sel in ("sel-0001", "sel-0002", "sel-0003", "sel-0004", "sel-0005"):
                open_page(page, f"{app_url}/selections?selection={sel}", "Selections")
                assert not cut_off(page), (sel, cut_off(page))
            zero_id = ZERO_GAIN(demo_store)[0]
            open_page(page, f"{app_url}/selections?selection=sel-0002&sample={zero_id}",
                      "Selections")
            assert not cut_off(page), cut_off(page)

            # the member picker follows the selection: "Open sample" opens one of it
            open_page(page, f"{app_url}/selections?selection=sel-0001", "Selections")
            picker = page.locator(".st-key-sel_member_pick").first
            picker.scroll_into_view_if_needed()
            picker.locator('[role="combobox"], input').first.click()
            page.get_by_role("option", name="#3 ·").first.click()
            settle(page)
            chooser = page.locator(".st-key-sel_id").first
            chooser.scroll_into_view_if_needed()
            chooser.locator('[role="combobox"], input').first.click()
            page.get_by_role("option", name="sel-0002 · task · delift").first.click()
            settle(page)
            page.get_by_role("button", name="Open sample").click()
            settle(page)
            check_no_exception(page, "selections/picker")
            assert "selection=sel-0002" in page.url and "view=Sample" in page.url
            assert metric(page, "in this selection") == "yes"

            # search inside a selection, in the URL
            open_page(page, f"{app_url}/selections?selection=sel-0001", "Selections")
            box = page.get_by_role("textbox", name="search prompt and response")
            box.fill("what")
            box.press("Enter")
            settle(page)
            total = browse_selections.member_search(store, "sel-0001", 1, 0, search="what")[1]
            page.get_by_text(f"{total:,} of 90 members match").first.wait_for()
            assert "search=what" in page.url
            # a metadata filter from a link
            family, _n = browse_versions.metadata_counts(store, "demo", 1, "family")[0]
            n_family = browse_selections.member_search(store, "sel-0001", 1, 0,
                                                       where=(("family", family),))[1]
            open_page(page, f"{app_url}/selections?selection=sel-0001&view=Members"
                            f"&where=family%3D{family}", "Selections")
            page.get_by_text(f"{n_family:,} of 90 members match").first.wait_for()
            page.evaluate("document.querySelector('[data-testid=\"stMain\"]')"
                          "?.scrollTo(0, 780)")  # the filters and the matching members
            page.wait_for_timeout(300)
            shoot(page, shots, "selections-search", top=False)
            # a click on the "characters" header sorts every matching member by length
            # (columns: row marker 32 px, then pick, gain, gain 0, characters: 75 px each)
            grid = page.locator(".st-key-sel_members_table [data-testid='stDataFrame']").first
            box = grid.bounding_box()
            page.mouse.click(box["x"] + 32 + 3 * 75 + 37, box["y"] + 17)
            settle(page)
            assert "sort=chars" in page.url and "order=descending" in page.url, page.url
            rows, _ = browse_selections.member_search(store, "sel-0001", 50, 0, "chars", True,
                                                      where=(("family", family),))
            click_row(page, "sel_members_table", 0)  # the longest matching member
            assert metric(page, "pick") == f"#{rows[0]['rank'] + 1}"

            # arrow keys step through the picks in the sample view
            ids = selection_sample_ids(store, "sel-0001")
            open_page(page, f"{app_url}/selections?selection=sel-0001&sample={ids[5]}",
                      "Selections")
            assert metric(page, "pick") == "#6"
            page.locator("h1").first.click()  # focus the page, not a text box
            page.keyboard.press("ArrowRight")
            settle(page)
            assert metric(page, "pick") == "#7"
            page.keyboard.press("ArrowLeft")
            settle(page)
            assert metric(page, "pick") == "#6"

            # a click on a point of the map opens its sample
            open_page(page, f"{app_url}/selections?selection=sel-0001&view=Map", "Selections")
            point = page.locator(".vega-embed .mark-symbol path").first
            point.wait_for(timeout=30_000)
            label = point.get_attribute("aria-label") or ""
            point.click(force=True)
            settle(page)
            check_no_exception(page, "selections/map click")
            assert "view=Sample" in page.url and "sample=" in page.url, page.url
            opened = page.url.split("sample=")[1].split("&")[0]
            assert opened in label, (opened, label)

            # Masks: under 2 s once the server has started (its reads are cached)
            for attempt in range(2):
                start = time.monotonic()
                page.goto(f"{app_url}/masks")
                # the heatmap, the layer sizes and their overlap: three charts drawn
                page.get_by_text("Layer-wise subsets").first.wait_for(timeout=30_000)
                page.locator(".vega-embed canvas, .vega-embed svg").nth(2).wait_for(
                    timeout=30_000)
                seconds = time.monotonic() - start
                print(f"masks page, visit {attempt + 1}: {seconds:.2f} s")
            assert seconds < 2.0, seconds
            settle(page)
            assert not cut_off(page), cut_off(page)
        finally:
            browser.close()
