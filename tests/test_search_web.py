"""The search page in a real browser: `python -m apps.search serve` in a subprocess, Debian's
headless Chromium driven by Playwright; the screenshot is inspected pixel by pixel."""
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from apps.search.indexing import index_collection
from apps.search.serve import middle_frame_jpeg
from tests.test_search_fixtures import STRIDE, VIDEOS, WINDOW, make_checkpoint, make_videos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def chromium_path():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("the web page test needs Debian's Chromium: apt-get install chromium (.ci/run installs it)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An index of the test videos served on a free port; yields (base URL, videos folder)."""
    root = tmp_path_factory.mktemp("web")
    checkpoint = make_checkpoint(str(root / "ckpt.pth.tar"))
    videos = make_videos(str(root / "videos"))
    index_collection(checkpoint, videos, str(root / "index"), WINDOW, STRIDE, batch_size=8, num_workers=0,
                     progress=False)
    port = free_port()
    log = open(root / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "apps.search", "serve", "--index", str(root / "index"),
                                "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"the server did not start: {(root / 'serve.log').read_text()}")
            time.sleep(0.2)
    yield url, videos
    process.terminate()
    process.wait(timeout=20)
    log.close()


def test_api_rejects_an_empty_query(server):
    url, _ = server
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(url + "/api/search?q=%20")
    assert error.value.code == 400


def test_search_page_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, videos = server
    api = json.loads(urllib.request.urlopen(url + "/api/search?q=a%20square%20moves&top_k=12&max_per_video=1").read())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(url + "/")
        page.fill("#q", "a square moves")
        page.press("#q", "Enter")
        page.wait_for_selector(".result")
        page.wait_for_function("[...document.querySelectorAll('.result img')]"
                               ".every(img => img.complete && img.naturalWidth > 0)", timeout=30000)
        cards = page.query_selector_all(".result")
        names = [c.query_selector(".name").inner_text() for c in cards]
        scores = [float(c.query_selector(".score").inner_text()) for c in cards]
        # One card per video (the page asks for max_per_video=1), best first, as the API answers.
        assert sorted(names) == sorted(os.path.basename(n) for n in VIDEOS)
        assert names == [r["name"] for r in api["results"]]
        assert scores == sorted(scores, reverse=True) == [round(r["score"], 3) for r in api["results"]]
        assert page.inner_text("#status") == "4 results for “a square moves”"
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot))
        boxes = [c.query_selector("img").bounding_box() for c in cards]
        # Each thumbnail in the screenshot is its window's middle frame, not a blank or broken image.
        screen = np.asarray(Image.open(shot).convert("RGB")).astype(np.float32)
        for box, hit in zip(boxes, api["results"]):
            x, y, w, h = (int(round(box[k])) for k in ("x", "y", "width", "height"))
            shown = screen[y + 2:y + h - 2, x + 2:x + w - 2]
            assert shown.std() > 25, f"thumbnail of {hit['name']} looks blank"
            frame = Image.open(io.BytesIO(middle_frame_jpeg(hit["path"], hit["start"], hit["end"])))
            expected = np.asarray(frame.convert("RGB").resize((w, h), Image.BILINEAR)).astype(np.float32)
            assert np.abs(shown - expected[2:h - 2, 2:w - 2]).mean() < 20, f"thumbnail of {hit['name']} differs"
        # A click plays the video from the start of the window.
        best = api["results"][0]
        cards[0].click()
        page.wait_for_function("document.getElementById('player').readyState >= 1", timeout=20000)
        state = page.evaluate("(() => { const p = document.getElementById('player'); "
                              "return {src: p.currentSrc, time: p.currentTime, error: p.error}; })()")
        source, start = state["src"].split("#t=")
        assert state["error"] is None and source == url + best["video"] and float(start) == best["start"]
        assert best["start"] - 0.01 <= state["time"] <= best["end"] + 1
        browser.close()
