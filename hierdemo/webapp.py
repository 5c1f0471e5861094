"""The Gradio app: predict along a taxonomy (with adapters), and fine-tune adapters in the background.

Configuration by environment variable: ``HIERDEMO_BACKBONE`` (default: the hub CLIP, falling back to the offline
embedded backbone), ``HIERDEMO_ADAPTERS`` (adapters folder, default ``./adapters``), and the limits of
:class:`hierdemo.uploads.Limits`.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import gradio as gr
import torch
from gradio.components.plot import PlotData

from .adapters import AdapterError, clean_stale_temp_dirs, find_adapters, read_adapter
from .backbones import DEFAULT_BACKBONE, BackboneError, load_backbone
from .data import DataError, ImageLoadError, load_image, scan_image_folder
from .figures import FigureSpec, sibling_figure, sunburst_figure, taxonomy_figure, to_json, training_figure, tree_figure
from .jobs import Job, JobManager, default_runner
from .losses import LOSS_NAMES
from .predict import Predictor
from .scoring import DECODE_MODES, leaf_marginals
from .taxonomy import IMAGE_SUFFIXES, Taxonomy, TaxonomyError
from .training import LATH_EPOCHS, MIN_AUTO_EPOCHS, TrainConfig, suggested_epochs, suggested_lr
from .uploads import Limits, UploadError, data_root, new_workdir, safe_extract

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ZERO_SHOT = "zero-shot"
USER_ERRORS = (AdapterError, BackboneError, DataError, ImageLoadError, TaxonomyError, UploadError, ValueError)


class AppContext:
    """Server-wide state: one predictor, the adapters folder, the job manager and the limits."""

    def __init__(self, backbone: str | None = None, adapters_dir: str | Path | None = None, limits: Limits | None = None):
        self.limits = limits or Limits.from_env()
        spec = backbone or os.environ.get("HIERDEMO_BACKBONE", DEFAULT_BACKBONE)
        self.predictor = Predictor(load_backbone(spec))
        self.backbone_name = self.predictor.backbone.name
        self.note = self.predictor.backbone.note
        self.adapters_dir = Path(adapters_dir or os.environ.get("HIERDEMO_ADAPTERS", "adapters")).resolve()
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_dirs(self.adapters_dir)
        self._train_backbone = None
        self._train_lock = threading.Lock()
        self.jobs = JobManager(runner=self._run_job, max_queue=self.limits.max_queue)
        self.adapters_version = 0
        self.jobs.listeners.append(lambda job: self._bump())
        example = ASSETS / "example_taxonomy.txt"
        self.example_taxonomy = example.read_text() if example.exists() else "animal\n  cat\n  dog\nplant\n"

    def _bump(self) -> None:
        self.adapters_version += 1

    def _run_job(self, job: Job) -> None:
        with self._train_lock:  # a clean copy of the backbone for training (the predictor's carries LoRA layers)
            if self._train_backbone is None:
                self._train_backbone = load_backbone(self.backbone_name, device=self.predictor.backbone.device)
        default_runner(job, backbone=self._train_backbone)

    # adapters -------------------------------------------------------------------------------------------
    def adapter_choices(self) -> list[tuple[str, str]]:
        found = [a for a in find_adapters(self.adapters_dir) if a.backbone == self.backbone_name]
        return [(ZERO_SHOT, ZERO_SHOT)] + [
            (f"{a.name} ({a.adapter_type}, FPA {a.meta.get('metrics', {}).get('fpa', 0):.2f})", str(a.path)) for a in found
        ]

    def adapter_key(self, choice: str | None) -> str | None:
        if not choice or choice == ZERO_SHOT:
            return None
        path = Path(choice).resolve()
        if path.parent != self.adapters_dir:  # only adapters this server listed, never an arbitrary path
            raise AdapterError(f"unknown adapter {Path(choice).name!r}")
        return self.predictor.load_adapter(path).key

    def import_adapter_zip(self, upload: str) -> str:
        """Unpack an uploaded adapter zip into the adapters folder after checking it fits this backbone."""
        work = new_workdir("adapter")
        try:
            root = data_root(safe_extract(upload, work / "x", self.limits))
            if not (root / "hierdemo.json").exists():
                subs = [p for p in root.iterdir() if (p / "hierdemo.json").exists()]
                root = subs[0] if len(subs) == 1 else root
            info = read_adapter(root)
            self.predictor.bank.check_compatible(info)
            name = unique_name(self.adapters_dir, safe_name(info.name))
            shutil.copytree(root, self.adapters_dir / f".{name}.tmp-upload")
            os.replace(self.adapters_dir / f".{name}.tmp-upload", self.adapters_dir / name)
            self.predictor.load_adapter(self.adapters_dir / name)
            self._bump()
            return str(self.adapters_dir / name)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip(".-")
    return name[:60] or "adapter"


def unique_name(folder: Path, name: str) -> str:
    candidate, i = name, 2
    while (folder / candidate).exists():
        candidate, i = f"{name}-{i}", i + 1
    return candidate


def upload_workdir(data_dir: str | Path) -> Path:
    """The temporary folder an upload was unpacked into (``data_dir`` lies somewhere inside it)."""
    path = Path(data_dir)
    while path.parent != path and not path.name.startswith("hierdemo-upload-"):
        path = path.parent
    if path.parent == path:
        raise ValueError(f"{data_dir} is not an unpacked upload")
    return path


def _user_error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc), print_exception=False)


# ---------------------------------------------------------------------- predict
def plot(spec: FigureSpec) -> PlotData:
    """A figure for a ``gr.Plot`` output, serialised directly (Gradio would build a plotly Figure only to call
    ``to_json`` on it, which costs more than the rest of a prediction besides the forward pass)."""
    return PlotData(type="plotly", plot=to_json(spec))


def predict_one(ctx: AppContext, image, adapter: str, taxonomy_text: str, mode: str, threshold: float, view: str, expand: bool):
    if image is None:
        raise gr.Error("Upload, paste or take a photo first.", print_exception=False)
    try:
        key = ctx.adapter_key(adapter)
        taxonomy = None if key else Taxonomy.parse(taxonomy_text or "")
        taxonomy, (pred,), probs, logits = ctx.predictor.predict_detailed([image], taxonomy, key, mode, threshold)
    except USER_ERRORS as exc:
        raise _user_error(exc) from None
    if view == "sunburst":
        main = sunburst_figure(taxonomy, leaf_marginals(logits, taxonomy.structure)[-1][0].tolist())
    else:
        main = tree_figure(taxonomy, pred, [p[0].tolist() for p in probs], collapse=False if expand else None)
    return plot(main), plot(sibling_figure(pred)), summary_markdown(pred, adapter)


def summary_markdown(pred, adapter: str | None) -> str:
    rows = ["| level | prediction | probability |", "|---|---|---|"]
    for lv in pred.levels:
        mark = "" if lv.level < pred.confident_depth else " *(below threshold)*"
        rows.append(f"| {lv.level + 1} | **{lv.name}**{mark} | {lv.prob:.3f} |")
    where = "zero-shot" if not adapter or adapter == ZERO_SHOT else f"adapter `{Path(adapter).name}`"
    extra = "" if pred.consistent else "\n\n**Note:** the per-level predictions do not form one path of the tree."
    shown = " → ".join(lv.name for lv in pred.levels[: max(1, pred.confident_depth)])
    return f"**{shown}** ({where}, {pred.mode})\n\n" + "\n".join(rows) + extra


def compare(ctx: AppContext, image, adapter: str, taxonomy_text: str, mode: str):
    if image is None:
        raise gr.Error("Upload a photo first.", print_exception=False)
    if not adapter or adapter == ZERO_SHOT:
        raise gr.Error("Choose an adapter to compare with zero-shot.", print_exception=False)
    try:
        key = ctx.adapter_key(adapter)
        img = load_image(image)
        taxonomy = ctx.predictor.bank.adapters[key].taxonomy
        out = []
        for k in (None, key):
            tax, (pred,), probs, _ = ctx.predictor.predict_detailed([img], taxonomy, k, mode)
            out += [plot(tree_figure(tax, pred, [p[0].tolist() for p in probs])), summary_markdown(pred, adapter if k else None)]
    except USER_ERRORS as exc:
        raise _user_error(exc) from None
    return tuple(out)


def batch_predict(ctx: AppContext, files, adapter: str, taxonomy_text: str, mode: str):
    if not files:
        raise gr.Error("Upload images or a zip of images.", print_exception=False)
    work = new_workdir("batch")
    try:
        key = ctx.adapter_key(adapter)
        taxonomy = None if key else Taxonomy.parse(taxonomy_text or "")
        paths: list[Path] = []
        for f in files:
            f = Path(f if isinstance(f, str) else f.name)
            if f.suffix.lower() == ".zip":
                out = safe_extract(f, work / f"z{len(paths)}", ctx.limits)
                paths += sorted(p for p in out.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            else:
                paths.append(f)
        if len(paths) > ctx.limits.max_images:
            raise UploadError(f"refused: {len(paths)} images (limit {ctx.limits.max_images})")
        rows = []
        for i in range(0, len(paths), 32):
            chunk, images = paths[i : i + 32], []
            for p in chunk:
                try:
                    images.append(load_image(p))
                except ImageLoadError as exc:
                    rows.append([p.name, f"skipped: {exc}", "", ""])
                    images.append(None)
            good = [im for im in images if im is not None]
            if not good:
                continue
            _tax, preds = ctx.predictor.predict(good, taxonomy, key, mode)
            it = iter(preds)
            for p, im in zip(chunk, images):
                if im is not None:
                    pred = next(it)
                    rows.append([p.name, " / ".join(lv.name for lv in pred.levels), f"{pred.levels[-1].prob:.3f}",
                                 "yes" if pred.consistent else "no"])
    except USER_ERRORS as exc:
        raise _user_error(exc) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(tempfile.mkdtemp(prefix="hierdemo-csv-")) / "predictions.csv"
    with open(out, "w", newline="") as fh:
        csv.writer(fh).writerows([["file", "path", "leaf probability", "valid path"], *rows])
    return rows, str(out)


# ---------------------------------------------------------------------- fine-tune
def inspect_upload(ctx: AppContext, upload, previous: str | None):
    """Unpack a zip of class folders and show the taxonomy and counts; returns the data folder as state."""
    if previous:
        shutil.rmtree(upload_workdir(previous), ignore_errors=True)
    if upload is None:
        return None, None, "", None
    work = new_workdir("upload")
    try:
        root = data_root(safe_extract(upload if isinstance(upload, str) else upload.name, work / "data", ctx.limits))
        scan = scan_image_folder(root, min_per_class=ctx.limits.min_images_per_class)
        if scan.report.images > ctx.limits.max_images:
            raise UploadError(f"refused: {scan.report.images} images (limit {ctx.limits.max_images})")
    except USER_ERRORS as exc:
        shutil.rmtree(work, ignore_errors=True)
        return None, None, f"**Cannot use this upload:** {exc}", None
    counts = sorted(scan.report.per_class.items())
    table = [[scan.taxonomy.name(leaf), leaf, n] for leaf, n in counts]
    report = f"**Ready:** {scan.report.summary()}"
    if scan.report.skipped:
        shown = list(scan.report.skipped.items())[:10]
        report += "\n\n" + "\n".join(f"- `{k}`: {v}" for k, v in shown)
    return plot(taxonomy_figure(scan.taxonomy, scan.report.per_class)), table, report, str(root)


def suggested_budget(data_dir: str | None, adapter_type: str, max_epochs: int) -> tuple[float, int]:
    """Learning rate and epochs to offer for this upload (see :func:`hierdemo.training.suggested_epochs`)."""
    images = sum(1 for p in Path(data_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if data_dir else 0
    train_images = round(images * (1 - TrainConfig.val_fraction))
    # before an upload: the fewest LoRA would get (or LatHAdapter's fixed budget)
    epochs = suggested_epochs(train_images, TrainConfig.batch_size, adapter_type) if images else (
        LATH_EPOCHS if adapter_type == "lathadapter" else MIN_AUTO_EPOCHS)
    return suggested_lr(adapter_type), min(epochs, max_epochs)


def start_job(ctx: AppContext, data_dir, name, loss, epochs, rank, lr, seed, towers, adapter_type="lora"):
    if not data_dir:
        raise gr.Error("Upload a zip of labelled class folders first.", print_exception=False)
    if int(epochs) > ctx.limits.max_epochs:
        raise gr.Error(f"At most {ctx.limits.max_epochs} epochs on this server.", print_exception=False)
    try:
        config = TrainConfig(backbone=ctx.backbone_name, loss=loss, epochs=int(epochs), rank=int(rank), alpha=2 * int(rank),
                             lr=float(lr), seed=int(seed), towers=tuple(towers or ["text"]), max_seconds=ctx.limits.job_seconds,
                             min_images_per_class=ctx.limits.min_images_per_class, adapter_type=adapter_type)
        config.validate()
        out = ctx.adapters_dir / unique_name(ctx.adapters_dir, safe_name(name or "my-adapter"))
        work = upload_workdir(data_dir)
        job = ctx.jobs.submit(out.name, Path(data_dir), out, config, cleanup=lambda: shutil.rmtree(work, ignore_errors=True))
    except (ValueError, RuntimeError) as exc:
        raise _user_error(exc) from None
    return job.id, None  # the upload now belongs to the job


def job_view(ctx: AppContext, job_id):
    """Status, progress bar, curves, log, before/after metrics and download for a job (the latest when none)."""
    job = ctx.jobs.jobs.get(job_id) if job_id else ctx.jobs.latest()
    if job is None:
        return "No training job yet.", None, "", "", None
    pct = int(100 * job.progress)
    bar = f"<div class='hd-bar'><div style='width:{pct}%'></div></div>"
    where = f" (position {ctx.jobs.position(job)} in the queue)" if job.status == "queued" else ""
    status = f"**Job {job.id} `{job.name}`: {job.status}**{where} — {job.stage} — {pct}%\n\n{bar}"
    if job.error:
        status += f"\n\n**Error:** {job.error}"
    metrics = ""
    if job.zero_shot:
        rows = ["| | FPA | TICE | wAP | hF1 | finest-level acc |", "|---|---|---|---|---|---|"]
        for label, m in (("zero-shot", job.zero_shot), ("adapter", job.metrics)):
            if m:
                rows.append(f"| {label} | {m['fpa']:.3f} | {m['tice']:.3f} | {m['wap']:.3f} | {m['hf1']:.3f} | {m['level_acc'][-1]:.3f} |")
        metrics = "\n".join(rows)
    download = None
    if job.status == "done" and job.out_dir.exists():
        archive = Path(tempfile.gettempdir()) / f"hierdemo-adapter-{job.id}-{job.name}"
        if not Path(str(archive) + ".zip").exists():
            shutil.make_archive(str(archive), "zip", job.out_dir.parent, job.out_dir.name)
        download = str(archive) + ".zip"
    return status, plot(training_figure(job.steps, job.epochs)), "\n".join(job.log[-30:]), metrics, download


# ---------------------------------------------------------------------- layout
CSS = ".hd-bar{background:#eee;border-radius:4px;height:14px}.hd-bar div{background:#2a7ae2;height:14px;border-radius:4px}"


def build_app(ctx: AppContext) -> gr.Blocks:
    examples = sorted(str(p) for p in (ASSETS / "examples").glob("*.png")) if (ASSETS / "examples").exists() else []
    with gr.Blocks(title="hierdemo: hierarchical classification") as demo:
        gr.Markdown("# hierdemo — classify photos along a taxonomy\nCLIP-style model + LoRA adapters trained with "
                    "hierarchy-aware losses (TP-KL, HiSCE).")
        banner = f"Backbone: `{ctx.backbone_name}`."
        if ctx.note:
            banner = f"**Offline mode:** {ctx.note}"
        gr.Markdown(banner, elem_id="backbone-banner")
        with gr.Tab("Predict"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(type="pil", label="Photo", sources=["upload", "clipboard", "webcam"], elem_id="predict-image")
                    if examples:
                        gr.Examples(examples, inputs=image)
                    adapter = gr.Dropdown(ctx.adapter_choices(), value=ZERO_SHOT, label="Adapter", elem_id="adapter-choice")
                    adapter_zip = gr.File(label="Add an adapter (zip)", file_types=[".zip"], elem_id="adapter-upload")
                    taxonomy_text = gr.Textbox(
                        ctx.example_taxonomy, lines=8,
                        label="Taxonomy for zero-shot (indented outline, JSON or CSV paths; adapters use their own)")
                    mode = gr.Radio(list(DECODE_MODES), value="consistent", label="Decoding")
                    threshold = gr.Slider(0, 1, value=0.0, step=0.05, label="Stop at the deepest level with probability ≥")
                    view = gr.Radio(["tree", "sunburst"], value="tree", label="View")
                    expand = gr.Checkbox(False, label="Show the whole tree (large taxonomies collapse to the path)")
                    go_btn = gr.Button("Predict", variant="primary", elem_id="predict-button")
                with gr.Column(scale=2):
                    summary = gr.Markdown(elem_id="predict-summary")
                    tree_plot = gr.Plot(label="Taxonomy", elem_id="tree-plot")
                    sib_plot = gr.Plot(label="Siblings", elem_id="sibling-plot")
            with gr.Accordion("Compare zero-shot and the adapter", open=False):
                cmp_btn = gr.Button("Compare")
                with gr.Row():
                    with gr.Column():
                        cmp_md_a = gr.Markdown()
                        cmp_a = gr.Plot(label="zero-shot")
                    with gr.Column():
                        cmp_md_b = gr.Markdown()
                        cmp_b = gr.Plot(label="adapter")
            with gr.Accordion("Batch: several images or a zip", open=False):
                batch_files = gr.File(file_count="multiple", label="Images or zip")
                batch_btn = gr.Button("Predict all")
                batch_table = gr.Dataframe(headers=["file", "path", "leaf probability", "valid path"], interactive=False)
                batch_csv = gr.File(label="CSV")
        with gr.Tab("Fine-tune"):
            gr.Markdown("Upload a **zip of class folders** (nested folders = taxonomy, images in the leaf folders). "
                        "Epochs and learning rate are suggested for the upload's size and the adapter type; change them "
                        "freely. Training runs in the background, one job at a time; on a Space with ZeroGPU keep jobs small.")
            upload_state = gr.State(None)
            job_state = gr.State(None)
            with gr.Row():
                with gr.Column():
                    data_zip = gr.File(label="Labelled images (zip)", file_types=[".zip"], elem_id="train-upload")
                    upload_report = gr.Markdown(elem_id="upload-report")
                    counts = gr.Dataframe(headers=["class", "folder", "images"], interactive=False)
                with gr.Column():
                    taxonomy_plot = gr.Plot(label="Parsed taxonomy")
            with gr.Row():
                name = gr.Textbox("my-adapter", label="Adapter name", elem_id="adapter-name")
                loss = gr.Dropdown(list(LOSS_NAMES), value="tpkl+hisce", label="Loss")
                epochs = gr.Slider(1, ctx.limits.max_epochs, value=suggested_budget(None, "lora", ctx.limits.max_epochs)[1], step=1,
                                   elem_id="epochs", label="Epochs")
                rank = gr.Slider(1, 32, value=8, step=1, label="LoRA rank")
                lr = gr.Number(1e-3, label="Learning rate")
                seed = gr.Number(0, precision=0, label="Seed")
                towers = gr.CheckboxGroup(["text", "vision"], value=["text"], label="LoRA on")
                adapter_type = gr.Radio(["lora", "lathadapter"], value="lora", label="Adapter type", elem_id="adapter-type")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="start-button")
                cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-button")
            job_status = gr.Markdown(elem_id="job-status")
            with gr.Row():
                curves = gr.Plot(label="Training curves")
                with gr.Column():
                    metrics = gr.Markdown(elem_id="job-metrics")
                    download = gr.File(label="Download adapter", elem_id="adapter-download")
            log = gr.Textbox(label="Log", lines=8, interactive=False)
            timer = gr.Timer(1.0)

        seen_version = gr.State(-1)

        go_btn.click(lambda *a: predict_one(ctx, *a), [image, adapter, taxonomy_text, mode, threshold, view, expand],
                     [tree_plot, sib_plot, summary], concurrency_limit=4, api_name="predict")
        cmp_btn.click(lambda *a: compare(ctx, *a), [image, adapter, taxonomy_text, mode], [cmp_a, cmp_md_a, cmp_b, cmp_md_b])
        batch_btn.click(lambda *a: batch_predict(ctx, *a), [batch_files, adapter, taxonomy_text, mode], [batch_table, batch_csv])

        def add_adapter(upload):
            if upload is None:
                return gr.skip()
            try:
                path = ctx.import_adapter_zip(upload if isinstance(upload, str) else upload.name)
            except (*USER_ERRORS, OSError) as exc:
                raise _user_error(exc) from None
            gr.Info(f"Adapter {Path(path).name} added.")
            return gr.update(choices=ctx.adapter_choices(), value=path)

        adapter_zip.upload(add_adapter, adapter_zip, adapter)
        # a budget for the data and adapter type: few images need more epochs, LatHAdapter a larger rate (BENCHMARKS.md)
        budget = lambda d, kind: suggested_budget(d, kind, ctx.limits.max_epochs)
        data_zip.change(lambda up, prev: inspect_upload(ctx, up, prev), [data_zip, upload_state],
                        [taxonomy_plot, counts, upload_report, upload_state]).then(budget, [upload_state, adapter_type], [lr, epochs])
        adapter_type.change(budget, [upload_state, adapter_type], [lr, epochs])
        start.click(lambda *a: start_job(ctx, *a), [upload_state, name, loss, epochs, rank, lr, seed, towers, adapter_type],
                    [job_state, upload_state])
        cancel.click(lambda j: ctx.jobs.cancel(j or getattr(ctx.jobs.latest(), "id", 0)) and None, job_state, None)

        def tick(job_id, version):
            choices = gr.skip() if version == ctx.adapters_version else gr.update(choices=ctx.adapter_choices())
            return (*job_view(ctx, job_id), choices, ctx.adapters_version)

        timer.tick(tick, [job_state, seen_version], [job_status, curves, log, metrics, download, adapter, seen_version],
                   show_progress="hidden")
    return demo


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    ctx = AppContext()
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=4).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        max_file_size=f"{ctx.limits.max_upload_mb}mb",
        css=CSS,
    )
