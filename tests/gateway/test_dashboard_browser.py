"""The dashboard end to end in headless Chromium (Selenium, Debian's chromium and
chromium-driver) against a real gateway over a real local pool: the page loads with a token,
a submitted batch appears in the task stream, and a screenshot shows the charts with data."""

from __future__ import annotations

import os
import shutil
import struct
import time

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    fallback = f"/usr/bin/{name}"
    return fallback if os.path.exists(fallback) else None


CHROMIUM, CHROMEDRIVER = _binary("chromium"), _binary("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="the browser test needs Debian's chromium and chromium-driver "
    f"(chromium: {CHROMIUM or 'missing'}, chromedriver: {CHROMEDRIVER or 'missing'})",
)
WIDTH, HEIGHT = 1400, 900


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WIDTH},{HEIGHT}", "--force-device-scale-factor=1"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False,
    })  # fmt: skip
    yield driver
    driver.quit()


def _until(driver, script, timeout=15.0):
    """The value of ``script`` once truthy (it is run again every 0.1 s)."""
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for: {script}"
        time.sleep(0.1)


def _console_errors(driver):
    """Console errors (CSP violations among them), but the 401s a bad token earns."""
    logs = driver.get_log("browser")
    return [e["message"] for e in logs if e["level"] == "SEVERE" and "401" not in e["message"]]


def _open(driver, url, token, window=60):
    driver.get(f"{url}/healthz")  # the origin, to reset its sessionStorage
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{url}/dashboard#token={token}&window={window}")
    _until(driver, "return window.hetfaas && window.hetfaas.polls.summary >= 1")


def test_the_page_loads_with_a_token_from_the_fragment(gateway, browser):
    t = gateway.tenant()
    _open(browser, gateway.url, t.token)
    assert browser.find_element("id", "namespace").text.startswith(f"namespace {t.namespace}")
    assert browser.execute_script("return location.hash") == ""  # out of the address bar
    assert browser.execute_script(
        "return sessionStorage.getItem('hetfaas.dashboard.token')") == t.token  # fmt: skip
    assert not browser.find_element("id", "login").is_displayed()
    _until(browser, "return document.getElementById('status').dataset.state === 'live'")
    state = browser.execute_script("return window.hetfaas.state")
    assert state["summary"]["namespace"] == t.namespace
    assert state["serving"]["runtimes"] == []
    assert "no serving runtime" in browser.find_element("id", "serving").text
    assert _console_errors(browser) == []


def test_without_a_token_the_page_asks_for_one(gateway, browser):
    t = gateway.tenant()
    browser.get(f"{gateway.url}/dashboard")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    login = browser.find_element("id", "login")
    assert login.is_displayed()
    field = browser.find_element("id", "login-token")
    field.send_keys("hft_000000000000_wrong")
    browser.find_element("css selector", "#login-form button").click()
    _until(browser, "return !document.getElementById('login').hidden")  # refused: asked again
    assert "refused" in browser.find_element("id", "login-why").text
    field.send_keys(t.token)
    browser.find_element("css selector", "#login-form button").click()
    _until(browser, "return window.hetfaas.state.summary && "
                    f"window.hetfaas.state.summary.namespace === '{t.namespace}'")  # fmt: skip
    assert not login.is_displayed()
    browser.get_log("browser")  # the refused token's 401 is expected


def test_a_submitted_batch_appears_in_the_task_stream(gateway, browser):
    from selenium.webdriver.common.action_chains import ActionChains

    t = gateway.tenant()
    t.deploy("sleep")
    _open(browser, gateway.url, t.token)
    resp = t.http.post("/v1/functions/sleep/batch", json={"inputs": [{"args": [0.1]}] * 16})
    assert resp.status_code == 202
    batch, ids = resp.json()["batch"], resp.json()["ids"]
    shown = _until(browser, f"""
        var s = window.hetfaas.state.stream;
        if (!s) return 0;
        var n = s.tasks.filter(function (x) {{ return x.b === '{batch}'; }}).length;
        return n === 16 && s.ended === 16 ? n : 0;""", timeout=30)  # fmt: skip
    assert shown == 16
    counter = browser.find_element("id", "stream-shown")
    _until(browser, "return document.getElementById('stream-shown').dataset.ended === '16'")
    assert counter.get_attribute("data-shown") == "16" and "16 ended" in counter.text
    legend = browser.find_element("css selector", "#legend [data-function='sleep']")
    assert legend.text == "sleep 16"
    row = _until(browser, f"""var row = document.querySelector("#batches tr[data-batch='{batch}']");
        return row && row.textContent.indexOf('16 / 16') >= 0 && row.textContent""")  # fmt: skip
    assert "sleep" in row and "done" in row  # the batches panel: its progress, ended
    lanes = browser.execute_script("return window.hetfaas.state.stream.lanes")
    assert lanes and all(lane["label"].startswith("worker ") for lane in lanes)
    # a click on a bar opens that invocation's detail (the stream is live: its time axis moves
    # on between reading the bars' boxes and the click, so a loaded machine may need another)
    canvas = browser.find_element("id", "stream")
    size = canvas.size
    for attempt in range(5):
        boxes = browser.execute_script("return window.hetfaas.hitBoxes()")
        assert len(boxes) == 16
        x0, x1, y0, y1, task_id = max(boxes, key=lambda b: b[1] - b[0])
        ActionChains(browser).move_to_element_with_offset(
            canvas, int((x0 + x1) / 2 - size["width"] / 2), int((y0 + y1) / 2 - size["height"] / 2)
        ).click().perform()
        try:
            _until(browser, "var d = window.hetfaas.state.detail; "
                            f"return d && d.id === '{task_id}'", timeout=3.0)  # fmt: skip
            break
        except AssertionError:
            if attempt == 4:
                raise
    detail = browser.find_element("id", "detail")
    assert detail.is_displayed() and task_id in detail.text and "compute" in detail.text
    assert task_id in ids
    browser.find_element("id", "detail-close").click()
    assert not detail.is_displayed()
    assert _console_errors(browser) == []


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_a_screenshot_shows_the_charts_with_data(gateway, browser, tmp_path):
    t = gateway.tenant()
    t.deploy("add")
    _open(browser, gateway.url, t.token)
    inputs = [{"args": [i, i]} for i in range(50)]
    t.http.post("/v1/functions/add/batch?wait=30", json={"inputs": inputs})
    _until(browser, "return window.hetfaas.state.stream && window.hetfaas.state.stream.ended >= 50")
    _until(
        browser,
        """var r = window.hetfaas.state.resources;
        return r.t.length >= 3 && r.machine_cpu_percent.length === r.t.length ? r.t.length : 0""",
    )
    res = browser.execute_script("return window.hetfaas.state.resources")  # one snapshot:
    samples = len(res["t"])  # a sample may have come in since the wait above
    assert samples >= 3
    assert len(res["machine_mem_mb"]) == samples and all(v > 0 for v in res["machine_mem_mb"])
    assert all(v is not None for v in res["machine_cpu_percent"])
    # the charts drew lines: pixels of the machine series' blue in their plot areas (below
    # the legend's swatch, y >= 13)
    inked = browser.execute_script("""
        function count(id) {
          var c = document.getElementById(id), ctx = c.getContext('2d');
          var d = ctx.getImageData(0, 13, c.width, c.height - 13).data, n = 0;
          for (var i = 0; i < d.length; i += 4)
            if (Math.abs(d[i] - 37) < 40 && Math.abs(d[i + 1] - 99) < 40 &&
                Math.abs(d[i + 2] - 235) < 40 && d[i + 3] > 128) n++;
          return n;
        }
        return [count('chart-cpu'), count('chart-mem'), count('chart-gpu')];
    """)
    assert inked[0] > 10 and inked[1] > 10 and inked[2] == 0, inked  # lines drawn; no GPU line
    path = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(path))
    data = path.read_bytes()
    assert _png_size(data) == (WIDTH, HEIGHT)
    assert len(data) > 30_000  # a page of panels, text and charts, not a blank one
    assert _console_errors(browser) == []


def test_the_page_stays_light_at_100k_invocations(gateway, browser):
    from tests.gateway.test_dashboard import _insert

    t = gateway.tenant()
    counts = _insert(gateway.store, t.namespace, 100_000, time.time(), n_functions=4, batches=20)
    _open(browser, gateway.url, t.token, window=300)
    _until(browser, "var s = window.hetfaas.state.stream; return s && s.ended === 100000", 30)
    stream = browser.execute_script("return window.hetfaas.state.stream")
    assert stream["totals"] == counts and stream["shown"] == 1000 and stream["truncated"]
    _until(browser, "return window.hetfaas.state.batches && "
                    "window.hetfaas.state.batches.batches.length === 20")  # fmt: skip
    # a bounded page: canvases, not a node per call; a stream drawn in well under a second
    nodes = browser.execute_script("return document.getElementsByTagName('*').length")
    assert nodes < 1500, nodes
    draw_ms = browser.execute_script("return window.hetfaas.lastDrawMs")
    assert 0 < draw_ms < 500, draw_ms
    legend = browser.find_elements("css selector", "#legend [data-function]")
    assert sorted(e.get_attribute("data-function") for e in legend) == sorted(counts)
    assert _console_errors(browser) == []
