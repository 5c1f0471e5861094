"""End to end in headless Chromium: predict, upload a labelled zip, train 1 epoch, select the adapter, predict.

Starts ``python app.py`` on a free localhost port with the tiny-random backbone. Screenshots go to
``$HIERDEMO_SCREENSHOTS`` (default: the test's temp folder).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import COLOUR_CLASSES, make_image_folder

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="apt-get install chromium chromium-driver"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    port = free_port()
    env = dict(os.environ, HIERDEMO_BACKBONE="tiny-random", HIERDEMO_ADAPTERS=str(tmp / "adapters"),
               GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_ANALYTICS_ENABLED="False",
               HIERDEMO_OFFLINE="1")
    log = open(tmp / "app.log", "w")  # noqa: SIM115  (stays open for the app process)
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("app exited: " + (tmp / "app.log").read_text()[-2000:])
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError("app did not start: " + (tmp / "app.log").read_text()[-2000:])
    yield url, tmp
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1100})
        pg.goto(app_url[0])
        pg.wait_for_selector("#predict-button", timeout=60_000)
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def shots(app_url):
    folder = Path(os.environ.get("HIERDEMO_SCREENSHOTS", app_url[1] / "shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_zero_shot_prediction_shows_tree(page, shots):
    from playwright.sync_api import expect

    page.locator("#predict-image input[type=file]").set_input_files(str(ROOT / "assets/examples/sneaker.png"))
    page.wait_for_timeout(1000)
    page.click("#predict-button")
    page.wait_for_selector("#tree-plot .js-plotly-plot", timeout=60_000)
    expect(page.locator("#predict-summary")).to_contain_text("zero-shot")
    assert page.locator("#tree-plot .scatterlayer .trace").count() >= 3  # tree edges, path, nodes
    assert page.locator("#sibling-plot .js-plotly-plot").count() == 1
    assert page.locator("#sibling-plot .barlayer .trace").count() == 3  # one bar chart per level of the path
    page.screenshot(path=str(shots / "predict.png"), full_page=True)


def test_bad_upload_is_refused_with_a_message(page, app_url, shots):
    from playwright.sync_api import expect

    bad = app_url[1] / "one-class.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("only/cats/a.txt", "not an image")
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#train-upload input[type=file]").set_input_files(str(bad))
    expect(page.locator("#upload-report")).to_contain_text("Cannot use this upload", timeout=60_000)


def test_train_select_adapter_and_predict(page, app_url, shots):
    from playwright.sync_api import expect

    data = make_image_folder(app_url[1] / "zipdata" / "my_data", COLOUR_CLASSES, per_class=5)
    archive = shutil.make_archive(str(app_url[1] / "colours"), "zip", data.parent, data.name)
    page.get_by_role("tab", name="Fine-tune").click()
    if page.locator("#train-upload input[type=file]").count() == 0:  # clear the previous upload first
        page.locator("#train-upload button[aria-label='Clear']").click()
    page.locator("#train-upload input[type=file]").set_input_files(archive)
    expect(page.locator("#upload-report")).to_contain_text("20 images in 4 classes", timeout=60_000)
    # 16 training images are one step an epoch: the suggested budget is the 30-epoch cap; a quick job here
    expect(page.locator("#epochs input[type=number]")).to_have_value("30", timeout=30_000)
    page.locator("#epochs input[type=number]").fill("1")
    page.locator("#epochs input[type=number]").press("Enter")
    page.locator("#adapter-name textarea, #adapter-name input").first.fill("colours")
    page.click("#start-button")
    expect(page.locator("#job-status")).to_contain_text(": done", timeout=180_000)
    expect(page.locator("#job-metrics")).to_contain_text("adapter")
    expect(page.locator("#adapter-download")).to_contain_text(".zip")
    page.screenshot(path=str(shots / "train.png"), full_page=True)
    assert (app_url[1] / "adapters" / "colours" / "adapter_model.safetensors").exists()

    page.get_by_role("tab", name="Predict").click()
    page.locator("#adapter-choice input").click()
    page.get_by_role("option", name="colours", exact=False).click()
    page.locator("#predict-image input[type=file]").set_input_files(str(data / "warm" / "red" / "img0.png"))
    page.wait_for_timeout(1000)
    page.click("#predict-button")
    expect(page.locator("#predict-summary")).to_contain_text("adapter colours", timeout=60_000)
    summary = page.inner_text("#predict-summary")
    assert "warm" in summary or "cool" in summary  # the adapter's own taxonomy is used
    page.screenshot(path=str(shots / "predict_adapter.png"), full_page=True)
