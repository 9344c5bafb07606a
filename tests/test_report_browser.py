"""report.html as a person sees it: a small run's report opened in headless Chromium at 1,280 px.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in NUL on file descriptors 3 and 4), so the test needs the browser and nothing
else. `.ci/run` installs Debian's ``chromium``; without a browser the test skips.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image
from test_report import HISTORY, make_row

from featpipe.finetune import FineTuner
from featpipe.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, HEIGHT = 1280, 800
TIMEOUT = 120.0  # seconds for any one browser reply: generous for a loaded 2-core machine

# What the page looks like once loaded: its images, its width, and every element that sticks
# out sideways without being inside a container that scrolls on purpose (overflow-x auto/scroll),
# and the containers that do scroll.
LAYOUT = """(() => {
  const view = document.documentElement.clientWidth;
  const scrolled = (el) => {
    for (let up = el.parentElement; up; up = up.parentElement) {
      const o = getComputedStyle(up).overflowX;
      if (o === "auto" || o === "scroll") return true;
    }
    return false;
  };
  const wide = [];
  for (const el of document.body.querySelectorAll("*")) {
    const box = el.getBoundingClientRect();
    if ((box.right > view + 0.5 || box.left < -0.5) && !scrolled(el))
      wide.push(`<${el.tagName.toLowerCase()}> ${Math.round(box.left)}..${Math.round(box.right)}`
        + ` px: ${el.textContent.slice(0, 60)}`);
  }
  const scrolling = [...document.body.querySelectorAll("*")]
    .filter((el) => getComputedStyle(el).overflowX !== "visible")
    .filter((el) => el.scrollWidth > el.clientWidth + 0.5)
    .map((el) => `<${el.tagName.toLowerCase()} class="${el.className}"> ${el.scrollWidth} px`
      + ` in ${el.clientWidth} px: ${el.textContent.slice(0, 60)}`);
  return {
    view, scrollWidth: document.documentElement.scrollWidth, wide, scrolling,
    images: [...document.images].map((i) => ({alt: i.alt, width: i.naturalWidth})),
  };
})()"""


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Browser:
    """Headless Chromium with one page, spoken to over the DevTools pipe."""

    def __init__(self, exe: str, profile: Path):
        read_end, self._write = os.pipe()  # we write commands; Chromium reads fd 3
        self._read, write_end = os.pipe()  # Chromium writes replies on fd 4; we read

        def onto_3_and_4():  # runs in the child before exec
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (read_end, write_end)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        args += ["--no-first-run", "--remote-debugging-pipe", f"--user-data-dir={profile}"]
        self.proc = subprocess.Popen(
            [*args, "about:blank"],
            close_fds=False,  # our own fds are non-inheritable anyway; 3 and 4 must survive
            preexec_fn=onto_3_and_4,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(read_end)
        os.close(write_end)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        try:
            target = self.send("Target.createTarget", url="about:blank")["targetId"]
            attached = self.send("Target.attachToTarget", targetId=target, flatten=True)
        except BaseException:
            self.close()
            raise
        self.session = attached["sessionId"]

    def _message(self) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"Chromium sent nothing for {TIMEOUT:.0f} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit code {self.proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: bool = False, **params) -> dict:
        """Send one command (to the page when ``session``) and return its result; events that
        arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params}
        if session:
            command["sessionId"] = self.session
        os.write(self._write, json.dumps(command).encode() + b"\0")
        while True:
            message = self._message()
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str, **params) -> None:
        """Wait until ``event`` with ``params`` among its parameters has arrived."""

        def seen() -> bool:
            return any(
                e.get("method") == event and all(e["params"].get(k) == v for k, v in params.items())
                for e in self.events
            )

        while not seen():
            self.events.append(self._message())

    def page(self, method: str, **params) -> dict:
        return self.send(method, session=True, **params)

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):  # it may just exit
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._read)
        os.close(self._write)


def console_errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and browser log errors (failed loads) as text."""
    errors = []
    for e in events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e.get("method") == "Runtime.exceptionThrown":
            errors.append(p["exceptionDetails"].get("exception", {}).get("description", str(p)))
        elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(f"{p['entry']['text']} ({p['entry'].get('url', '')})")
    return errors


def look_at(exe: str, html: Path, profile: Path) -> tuple[dict, list[str], bytes]:
    """Open ``html`` in Chromium ``exe`` at 1,280 x 800 px once it has loaded: its LAYOUT,
    console errors and a full-page PNG screenshot."""
    browser = Browser(exe, profile)
    try:
        for domain in ("Page", "Runtime", "Log"):
            browser.page(f"{domain}.enable")
        metrics = {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}
        browser.page("Emulation.setDeviceMetricsOverride", **metrics)
        browser.page("Page.setLifecycleEventsEnabled", enabled=True)
        navigation = browser.page("Page.navigate", url=html.as_uri())
        assert "errorText" not in navigation, navigation
        # The load of this page (not of about:blank): every image has loaded or failed.
        browser.wait_for("Page.lifecycleEvent", name="load", loaderId=navigation["loaderId"])
        layout = browser.page("Runtime.evaluate", expression=LAYOUT, returnByValue=True)
        shot = browser.page("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    finally:
        browser.close()
    return layout["result"]["value"], console_errors(browser.events), base64.b64decode(shot["data"])


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = find_browser()
    if exe is None:
        pytest.skip(
            f"no Chromium on PATH (looked for {', '.join(BROWSERS)}); `.ci/run` installs it"
        )
    return exe


HEADS = {
    "logreg": ("logistic regression", {"C": 0.1}),
    "rbf_svm": ("RBF SVM", {"C": 10.0, "gamma": "scale"}),
    "mlp": ("MLP", {"alpha": 0.0001, "hidden_layer_sizes": [512, 256], "max_iter": 60}),
    "knn": ("kNN", {"metric": "cosine", "n_neighbors": 5}),
}


@pytest.fixture(scope="module")
def report_html(chromium, tmp_path_factory) -> Path:
    """report.html of a run shaped like the demo: two seeds, heads on a long layer name, two
    fine-tuning modes with every FineTuner parameter (the widest results table a run writes)."""
    rows = []
    for seed in (0, 1):
        for layer in ("pooled", "blocks.5:avg+blocks.6:avg"):
            for head, (name, params) in HEADS.items():
                row = make_row(f"lite0/{head}@{layer}", seed=seed, layer=layer, head=head)
                row["label"] = f"{name} on layer {layer}"
                row["params"] = {**params, "selection": "val", "probabilistic": True}
                rows.append(row)
        for mode in ("full", "lpft"):
            row = make_row(
                f"lite0/finetune:{mode}", "finetune", 0.9, seed, mode=mode, history=HISTORY
            )
            row["label"] = f"fine-tuning ({mode})"
            row["params"] = {
                **FineTuner(backbone="efficientnet_lite0").get_params(),
                "best_epoch": 2,
            }
            rows.append(row)
    return write_report(tmp_path_factory.mktemp("report"), rows)["report.html"]


def test_report_reads_well_at_1280_px(chromium, report_html, tmp_path):
    layout, errors, png = look_at(chromium, report_html, tmp_path / "profile")
    (tmp_path / "report.png").write_bytes(png)  # to look at: pytest --basetemp=DIR
    assert len(layout["images"]) >= 4, layout["images"]
    assert [i["alt"] for i in layout["images"] if i["width"] == 0] == []  # every image drawn
    assert layout["view"] <= WIDTH
    assert layout["scrollWidth"] <= layout["view"], layout["wide"]  # no sideways scrolling
    assert layout["wide"] == []
    assert layout["scrolling"] == []  # every table fits; none needs its scroll box here
    assert errors == []

    shot = Image.open(io.BytesIO(png)).convert("L")
    assert shot.width == layout["view"] and shot.height >= HEIGHT, shot.size
    assert shot.getextrema()[0] < 100 and len(shot.getcolors(256)) > 20  # text and plots drawn


BROKEN = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<div style="overflow-x: auto"><table style="width: 3000px"><tr><td>scrolls on purpose</td></tr>
</table></div>
<table style="width: 2000px"><tr><td>too wide</td></tr></table>
<img alt="missing" src="missing.png"><img alt="drawn" src="data:image/png;base64,{png}">
<script>console.error("boom")</script></body></html>"""


def test_the_check_sees_overflow_broken_images_and_errors(chromium, tmp_path):
    dot = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(dot, format="PNG")
    page = tmp_path / "broken.html"
    page.write_text(BROKEN.format(png=base64.b64encode(dot.getvalue()).decode()))
    layout, errors, _ = look_at(chromium, page, tmp_path / "profile")
    assert layout["scrollWidth"] > 1900
    assert [w.split(" ")[0] for w in layout["wide"]] == ["<table>", "<tbody>", "<tr>", "<td>"]
    assert all("too wide" in w for w in layout["wide"])
    assert {i["alt"]: i["width"] for i in layout["images"]} == {"missing": 0, "drawn": 4}
    assert any("boom" in e for e in errors) and any("missing.png" in e for e in errors), errors


def test_report_of_hostile_names_stays_inert_and_within_the_page(chromium, tmp_path):
    # Class names and labels holding HTML must load nothing and run nothing; a label of 320
    # characters without a space scrolled the page sideways (paragraphs and list items did
    # not wrap it: 3,223 px in a 1,265 px view).
    from test_trust_report_render import evil_rows

    rows = evil_rows()
    rows[0]["label"] = "<img src=x onerror=alert(1)>" + "unbroken" * 40
    written = write_report(tmp_path / "run", rows)
    layout, errors, _ = look_at(chromium, written["report.html"], tmp_path / "profile")
    figures = [name for name in written if name not in ("report.md", "report.html")]
    assert len(layout["images"]) == len(figures) and all(i["width"] for i in layout["images"])
    assert errors == []  # a live <img src=x> would have logged a failed load
    assert layout["scrollWidth"] <= layout["view"], layout["wide"]
