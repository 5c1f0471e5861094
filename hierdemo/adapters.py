"""LoRA adapters with peft: attach, save as a folder, load several on one base and switch.

An adapter folder holds peft's own ``adapter_config.json`` and ``adapter_model.safetensors`` plus
``hierdemo.json`` (adapter type, backbone, towers, prompt templates, training config, eval metrics) and
``taxonomy.json``. Folders are written to a temporary sibling and renamed into place, so a crash never leaves a
half-written adapter under the final name. Only safetensors weights are ever read (no pickle).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from .cache import replace_dir
from .taxonomy import Taxonomy

META_FILE = "hierdemo.json"
TAXONOMY_FILE = "taxonomy.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
FORMAT = "hierdemo-adapter"
REQUIRED_FILES = {  # weights file first, then its JSON config
    "lora": (WEIGHTS_FILE, PEFT_CONFIG_FILE),
    "lathadapter": ("lathadapter.safetensors", "lathadapter_config.json"),
}
TOWERS = ("text", "vision")


class AdapterError(ValueError):
    """An adapter folder that cannot be used here, with a message meant for the user."""


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    towers: tuple[str, ...] = ("text",)

    def __post_init__(self) -> None:
        bad = set(self.towers) - set(TOWERS)
        if bad or not self.towers:
            raise ValueError(f"towers must be a non-empty subset of {TOWERS}, got {self.towers}")
        if self.rank < 1:
            raise ValueError("LoRA rank must be at least 1")


def lora_config(backbone, settings: LoraSettings) -> LoraConfig:
    """A peft LoraConfig whose ``target_modules`` regex selects the chosen towers' layers of this backbone."""
    pattern = "|".join(f"(?:{backbone.lora_targets[t]})" for t in settings.towers)
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=pattern)


def attach_lora(model: torch.nn.Module, backbone, settings: LoraSettings) -> PeftModel:
    """Wrap ``model`` (changed in place: LoRA layers are injected) so only LoRA weights train."""
    for p in model.parameters():
        p.requires_grad_(False)
    return get_peft_model(model, lora_config(backbone, settings))


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------- folders
@dataclass
class AdapterInfo:
    path: Path
    meta: dict
    taxonomy: Taxonomy
    key: str  # content hash of the weights and metadata

    @property
    def name(self) -> str:
        return self.meta.get("name") or self.path.name

    @property
    def backbone(self) -> str:
        return self.meta["backbone"]

    @property
    def adapter_type(self) -> str:
        return self.meta.get("adapter_type", "lora")

    @property
    def adapts_text(self) -> bool:
        return "text" in self.meta.get("towers", TOWERS)

    @property
    def templates(self) -> tuple[str, ...]:
        return tuple(self.meta["templates"])


def save_adapter(peft_model: PeftModel, out_dir: str | Path, meta: dict, taxonomy: Taxonomy) -> Path:
    """Write a LoRA adapter folder atomically and return its path."""
    return write_adapter_folder(
        out_dir, {"adapter_type": "lora", **meta}, taxonomy,
        lambda folder: peft_model.save_pretrained(str(folder), safe_serialization=True),
    )


def write_adapter_folder(out_dir: str | Path, meta: dict, taxonomy: Taxonomy, write_weights) -> Path:
    """Write ``write_weights(folder)``, the metadata and the taxonomy into a temporary sibling, then rename it to
    ``out_dir`` (replacing an older one), so a crash never leaves a half-written adapter under that name."""
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        write_weights(tmp)
        (tmp / META_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=1))
        (tmp / TAXONOMY_FILE).write_text(taxonomy.to_json())
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_adapter(path: str | Path) -> AdapterInfo:
    """Read and check an adapter folder's files (without loading weights into a model)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise AdapterError(f"{path} is not an adapter folder")
    if not (path / META_FILE).is_file():
        raise AdapterError(f"{path.name} is not a hierdemo adapter: missing {META_FILE}")
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{path.name}: damaged adapter files ({exc})") from None
    kind = meta.get("adapter_type", "lora") if isinstance(meta, dict) else None
    if kind not in REQUIRED_FILES:
        raise AdapterError(f"{path.name}: unsupported adapter type {kind!r}")
    missing = [f for f in (TAXONOMY_FILE, *REQUIRED_FILES[kind]) if not (path / f).is_file()]
    if missing:
        raise AdapterError(f"{path.name} is not a hierdemo adapter: missing {', '.join(missing)}")
    try:
        extra_cfg = json.loads((path / REQUIRED_FILES[kind][1]).read_text())
        taxonomy = Taxonomy.from_nested(json.loads((path / TAXONOMY_FILE).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterError(f"{path.name}: damaged adapter files ({exc})") from None
    if meta.get("format") != FORMAT or not isinstance(meta.get("backbone"), str) or "templates" not in meta:
        raise AdapterError(f"{path.name}: {META_FILE} is not a hierdemo adapter description")
    if kind == "lora" and extra_cfg.get("peft_type") != "LORA":
        raise AdapterError(f"{path.name}: {PEFT_CONFIG_FILE} is not a LoRA configuration")
    if meta.get("taxonomy_fingerprint") and meta["taxonomy_fingerprint"] != taxonomy.fingerprint:
        raise AdapterError(f"{path.name}: {TAXONOMY_FILE} does not match the taxonomy the adapter was trained on")
    h = hashlib.sha256((path / META_FILE).read_bytes())
    for name in REQUIRED_FILES[kind]:
        h.update((path / name).read_bytes())
    return AdapterInfo(path, meta, taxonomy, h.hexdigest()[:16])


def find_adapters(folder: str | Path) -> list[AdapterInfo]:
    """Valid adapter folders directly under ``folder`` (temporary and broken ones are skipped), by name."""
    folder = Path(folder)
    found = []
    for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
        if sub.name.startswith("."):
            continue
        try:
            found.append(read_adapter(sub))
        except AdapterError:
            continue
    return found


def clean_stale_temp_dirs(folder: str | Path) -> list[Path]:
    """Remove leftovers of interrupted saves (``.NAME.tmp-*`` and ``.NAME.old-*``); returns what was removed."""
    folder = Path(folder)
    stale = [p for p in folder.glob(".*") if p.is_dir() and (".tmp-" in p.name or ".old-" in p.name)] if folder.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


# ---------------------------------------------------------------------- several adapters on one base
class AdapterBank:
    """Several LoRA adapters loaded on one backbone; ``use(key)`` switches, ``use(None)`` is zero-shot.

    Switching changes shared model state, so forwards run inside ``use`` under one lock.
    """

    def __init__(self, backbone):
        self.backbone = backbone
        self.peft: PeftModel | None = None
        self.adapters: dict[str, AdapterInfo] = {}
        self.heads: dict[str, torch.nn.Module] = {}  # scoring heads of non-LoRA adapters (LatHAdapter)
        self.lock = threading.RLock()

    def check_compatible(self, info: AdapterInfo) -> None:
        if info.backbone != self.backbone.name:
            raise AdapterError(
                f"adapter {info.name!r} was trained for backbone {info.backbone!r}, but {self.backbone.name!r} is loaded"
            )

    def load(self, path: str | Path) -> AdapterInfo:
        """Load an adapter folder (idempotent per content); returns its info, whose ``key`` selects it."""
        info = read_adapter(path)
        self.check_compatible(info)
        with self.lock:
            if info.key in self.adapters:
                return self.adapters[info.key]
            try:
                if info.adapter_type == "lathadapter":
                    from .lathadapter import LatHAdapter

                    self.heads[info.key] = LatHAdapter.load(info.path).to(self.backbone.device)
                elif self.peft is None:
                    self.peft = PeftModel.from_pretrained(self.backbone.model, str(info.path), adapter_name=info.key)
                else:
                    self.peft.load_adapter(str(info.path), adapter_name=info.key)
            except Exception as exc:
                raise AdapterError(f"adapter {info.name!r} does not fit {self.backbone.name}: {str(exc)[:300]}") from None
            if self.peft is not None:
                self.peft.eval()
            self.adapters[info.key] = info
        return info

    @contextlib.contextmanager
    def use(self, key: str | None) -> Iterator[AdapterInfo | None]:
        """Run the enclosed forwards with adapter ``key`` active (``None``: base model, zero-shot)."""
        with self.lock:
            if key is not None and key not in self.adapters:
                raise AdapterError(f"adapter {key!r} is not loaded")
            if key is None or key in self.heads:  # heads score on top of the unadapted model
                ctx = self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()
                with ctx:
                    yield self.adapters.get(key) if key else None
                return
            self.peft.set_adapter(key)
            yield self.adapters[key]
