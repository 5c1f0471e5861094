"""App handlers without a browser: adapters, compare, batch, uploads, jobs, crash leftovers, concurrent users."""

import json
import shutil
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from conftest import COLOUR_CLASSES, make_image_folder
from hierdemo.training import TrainConfig, train
from hierdemo.uploads import Limits
from hierdemo.webapp import (
    ZERO_SHOT,
    AppContext,
    batch_predict,
    compare,
    inspect_upload,
    job_view,
    predict_one,
    start_job,
    suggested_budget,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("web")
    data = make_image_folder(root / "data" / "my_data", COLOUR_CLASSES, per_class=6)
    adapters = root / "adapters"
    train(data, adapters / "colours", TrainConfig(backbone="tiny-random", epochs=1, batch_size=8), tiny_backbone)
    (adapters / ".crashed.tmp-123").mkdir()  # a job killed while saving
    ctx = AppContext("tiny-random", adapters, Limits(max_images=100, max_epochs=3))
    return root, data, ctx


def test_start_up_removes_crash_leftovers_and_lists_adapters(setup):
    root, _, ctx = setup
    assert not (root / "adapters" / ".crashed.tmp-123").exists()
    values = [v for _, v in ctx.adapter_choices()]
    assert values[0] == ZERO_SHOT and values[1].endswith("colours")


def test_predict_zero_shot_and_with_adapter(setup):
    _, data, ctx = setup
    image = Image.open(next((data / "warm" / "red").iterdir()))
    _tree, _bars, md = predict_one(ctx, image, ZERO_SHOT, "fruit\n  apple\n  pear\nveg\n", "consistent", 0.0, "tree", False)
    assert "zero-shot" in md and ("fruit" in md or "veg" in md)
    sun, _, _ = predict_one(ctx, image, ZERO_SHOT, "fruit\n  apple\n  pear\nveg\n", "leaf-marginal", 0.0, "sunburst", False)
    assert json.loads(sun.plot)["data"][0]["type"] == "sunburst"
    _, _, md = predict_one(ctx, image, ctx.adapter_choices()[1][1], "", "independent", 0.0, "tree", True)
    assert "adapter `colours`" in md
    with pytest.raises(gr.Error, match="at least two classes"):
        predict_one(ctx, image, ZERO_SHOT, "only", "consistent", 0.0, "tree", False)
    with pytest.raises(gr.Error, match="Upload"):
        predict_one(ctx, None, ZERO_SHOT, "a\nb", "consistent", 0.0, "tree", False)
    outside = setup[0] / "data"  # a path the client made up, outside the adapters folder
    with pytest.raises(gr.Error, match="unknown adapter"):
        predict_one(ctx, image, str(outside), "", "consistent", 0.0, "tree", False)


def test_compare_side_by_side(setup):
    _, data, ctx = setup
    image = Image.open(next((data / "cool" / "blue").iterdir()))
    _fig_a, md_a, _fig_b, md_b = compare(ctx, image, ctx.adapter_choices()[1][1], "", "consistent")
    assert "zero-shot" in md_a and "adapter" in md_b
    with pytest.raises(gr.Error, match="Choose an adapter"):
        compare(ctx, image, ZERO_SHOT, "", "consistent")


def test_batch_with_zip_and_bad_files(setup, tmp_path):
    _, data, ctx = setup
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    archive = shutil.make_archive(str(tmp_path / "imgs"), "zip", data / "warm")
    rows, csv_path = batch_predict(ctx, [str(bad), archive, str(next((data / "cool" / "blue").iterdir()))],
                                   ctx.adapter_choices()[1][1], "", "consistent")
    assert len(rows) == 1 + 12 + 1
    assert rows[0][1].startswith("skipped: not a readable image")
    assert all(" / " in r[1] for r in rows[1:])
    assert Path(csv_path).read_text().splitlines()[0] == "file,path,leaf probability,valid path"


def test_adapter_zip_uploads(setup, tmp_path):
    root, _, ctx = setup
    good = shutil.make_archive(str(tmp_path / "good"), "zip", root / "adapters", "colours")
    path = ctx.import_adapter_zip(good)
    assert Path(path).name == "colours-2" and path in [v for _, v in ctx.adapter_choices()]
    # not an adapter
    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as zf:
        zf.writestr("x/readme.txt", "hi")
    with pytest.raises(Exception, match="not a hierdemo adapter"):
        ctx.import_adapter_zip(str(junk))
    # an adapter for another backbone
    other = tmp_path / "other"
    shutil.copytree(root / "adapters" / "colours", other / "colours")
    meta = json.loads((other / "colours" / "hierdemo.json").read_text())
    meta["backbone"] = "embedded"
    (other / "colours" / "hierdemo.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="trained for backbone 'embedded'"):
        ctx.import_adapter_zip(shutil.make_archive(str(tmp_path / "other"), "zip", other))
    # zip-slip inside an adapter zip
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../evil.json", "{}")
    with pytest.raises(Exception, match="leaves its folder"):
        ctx.import_adapter_zip(str(evil))
    assert not (tmp_path / "evil.json").exists()


def test_inspect_upload_reports_problems(setup, tmp_path):
    _, data, ctx = setup
    one = tmp_path / "one.zip"
    with zipfile.ZipFile(one, "w") as zf:
        zf.writestr("d/cats/a.png", (data / "warm/red/img0.png").read_bytes())
        zf.writestr("d/cats/b.png", (data / "warm/red/img1.png").read_bytes())
    _, table, report, state = inspect_upload(ctx, str(one), None)
    assert state is None and "only one class" in report
    good = shutil.make_archive(str(tmp_path / "good"), "zip", data.parent, data.name)
    _fig, table, report, state = inspect_upload(ctx, good, None)
    assert "24 images in 4 classes" in report and len(table) == 4 and Path(state).name == "my_data"
    # uploading again cleans the previous unpacked folder
    inspect_upload(ctx, None, state)
    assert not Path(state).exists()


def test_job_through_the_app_and_concurrent_predictions(setup, tmp_path):
    _, data, ctx = setup
    good = shutil.make_archive(str(tmp_path / "job"), "zip", data.parent, data.name)
    _, _, _, state = inspect_upload(ctx, good, None)
    with pytest.raises(gr.Error, match="At most 3 epochs"):
        start_job(ctx, state, "x", "tpkl+hisce", 9, 4, 1e-3, 0, ["text"])
    job_id, owned = start_job(ctx, state, "fresh one", "tpkl+hisce", 2, 4, 1e-3, 0, ["text"])
    assert owned is None
    # while it trains, several users predict with different adapters and taxonomies: no cross-talk
    img = Image.open(next((data / "warm" / "orange").iterdir()))
    adapter = ctx.adapter_choices()[1][1]
    cases = [(ZERO_SHOT, "fruit\n  apple\n  pear\nveg\n"), (adapter, ""), (ZERO_SHOT, "a\nb\nc\n")]
    expected = [predict_one(ctx, img, a, t, "consistent", 0.0, "tree", False)[2] for a, t in cases]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda i: predict_one(ctx, img, *cases[i % 3], "consistent", 0.0, "tree", False)[2], range(18)))
    assert got == [expected[i % 3] for i in range(18)]
    end = time.time() + 120
    while ctx.jobs.jobs[job_id].status in ("queued", "running") and time.time() < end:
        time.sleep(0.2)
    status, _fig, _log, metrics, download = job_view(ctx, job_id)
    assert ": done" in status and "adapter" in metrics and download.endswith(".zip")
    assert zipfile.ZipFile(download).namelist()
    assert any(v.endswith("fresh-one") for _, v in ctx.adapter_choices())
    assert not Path(state).exists()  # the job removed its upload folder


def test_cancel_a_running_job(setup, tmp_path):
    _, data, ctx = setup
    good = shutil.make_archive(str(tmp_path / "c"), "zip", data.parent, data.name)
    _, _, _, state = inspect_upload(ctx, good, None)
    job_id, _ = start_job(ctx, state, "cancelled-one", "flat", 3, 4, 1e-3, 0, ["text"])
    assert ctx.jobs.cancel(job_id)
    end = time.time() + 60
    while ctx.jobs.jobs[job_id].status in ("queued", "running") and time.time() < end:
        time.sleep(0.1)
    assert ctx.jobs.jobs[job_id].status == "cancelled"
    assert not (ctx.adapters_dir / "cancelled-one").exists()



def test_lathadapter_job_from_the_app(setup, tmp_path):
    _, data, ctx = setup
    good = shutil.make_archive(str(tmp_path / "l"), "zip", data.parent, data.name)
    _, _, _, state = inspect_upload(ctx, good, None)
    job_id, _ = start_job(ctx, state, "hyper", "tpkl+hisce", 1, 4, 1e-3, 0, ["text"], "lathadapter")
    end = time.time() + 120
    while ctx.jobs.jobs[job_id].status in ("queued", "running") and time.time() < end:
        time.sleep(0.2)
    assert ctx.jobs.jobs[job_id].status == "done", ctx.jobs.jobs[job_id].error
    label, value = next((lbl, v) for lbl, v in ctx.adapter_choices() if v.endswith("hyper"))
    assert "lathadapter" in label
    image = Image.open(next((data / "warm" / "red").iterdir()))
    _, _, md = predict_one(ctx, image, value, "", "consistent", 0.0, "tree", False)
    assert "adapter `hyper`" in md


def test_training_budget_follows_the_upload_and_the_server_limit(setup):
    _, data, _ = setup  # 24 images -> 19 for training: one step an epoch at batch 32 -> 30 epochs
    assert suggested_budget(str(data), "lora", 30) == (1e-3, 30)
    assert suggested_budget(str(data), "lora", 3) == (1e-3, 3)  # the server's limit
    assert suggested_budget(str(data), "lathadapter", 30) == (1e-2, 30)
    assert suggested_budget(None, "lora", 30) == (1e-3, 5)  # before any upload
