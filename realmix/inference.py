"""A trained network from a run's `model.pt`, and batched class probabilities for uint8 images.

    model, record = load_model("runs/realmix/digits_aug10.1@30-100/model.pt", "ema")
    probs = predict_proba(model, images, autocast_dtype=record.autocast_dtype)  # images: N x H x W x C uint8

Used by the training loop's evaluations, the `evaluate` stage and `realmix predict`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from .errors import RealmixError
from .models import build_model, to_input

WEIGHTS = {"ema": "model", "raw": "raw_model"}


def load_model(path: str | os.PathLike, weights: str = "ema", device: torch.device | str = "cpu"
               ) -> tuple[nn.Module, ckpt.ModelRecord]:
    """The network of a run's model.pt in eval mode, with its EMA (default) or raw weights, and the run's record
    (class_names, image_shape, precision, history, ...). A clear error for a missing, corrupt or foreign file."""
    if weights not in WEIGHTS:
        raise RealmixError(f"unknown weights {weights!r}; choose one of: {', '.join(WEIGHTS)}")
    record = ckpt.ModelRecord.load(path)
    model = build_model(record.arch, record.num_classes, record.image_shape)
    try:
        model.load_state_dict(getattr(record, WEIGHTS[weights]))
    except (RuntimeError, KeyError) as e:
        raise RealmixError(f"{path}: its weights do not fit its recorded architecture {record.arch}; "
                           "the file is damaged: retrain the run") from e
    model = model.to(device).eval()
    if record.fast_path.get("channels_last"):
        # the run's layout, as its training loop evaluated it: the same kernels, so the same figures
        model.to(memory_format=torch.channels_last)
    return model, record


def has_open_heads(model: nn.Module) -> bool:
    """Whether the network has IOMatch's open-set heads (then `model(x, heads=True)` also gives their logits)."""
    return getattr(model, "heads", None) is not None


def predict_proba(model: nn.Module, images: Any, *, batch: int = 256, device: torch.device | str | None = None,
                  autocast_dtype: torch.dtype | None = None, progress: Any = None) -> np.ndarray:
    """Softmax probabilities (N x K float32) of uint8 N x H x W x C images, `batch` at a time.

    The model is put in eval mode for the call (BN running statistics) and restored after. `progress`, if given,
    is called with the number of images done after each batch.
    """
    return predict_outputs(model, images, batch=batch, device=device, autocast_dtype=autocast_dtype,
                           progress=progress).probs


@dataclass
class Outputs:
    """What a network says about N images: class probabilities (N x K), the energy -logsumexp(logits) (N; higher
    = less like any trained class, Liu et al. 2020) and, for a network with open-set heads when asked for, the
    open head's (K+1)-way probabilities (N x (K+1), the last column = out-of-class); else None. `features`: when
    asked for, the L2-normalised pooled features the classifier reads (N x F float32; the kNN score's input)."""

    probs: np.ndarray
    energy: np.ndarray
    open_probs: np.ndarray | None = None
    features: np.ndarray | None = None


@torch.inference_mode()
def predict_outputs(model: nn.Module, images: Any, *, batch: int = 256, device: torch.device | str | None = None,
                    autocast_dtype: torch.dtype | None = None, progress: Any = None, open_head: bool = False,
                    features: bool = False) -> Outputs:
    """`predict_proba`'s probabilities with the energy of each image and, with `open_head` on a network that has
    the open-set heads, the open head's probabilities; with `features`, the normalised pooled features (the same
    forward, split at the pooling: `model.embed`, then `model.fc`). One forward per batch."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    heads = open_head and has_open_heads(model)
    was_training = model.training
    model.eval()
    out, out_energy, out_open, out_features = [], [], [], []
    amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    try:
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.array(images[i:i + batch])).to(device).permute(0, 3, 1, 2)
            with amp:
                if features:
                    pooled = model.embed(to_input(x))
                    logits = model.fc(pooled).float()
                    out_features.append(torch.nn.functional.normalize(pooled.float(), dim=1).cpu())
                    if heads:
                        out_open.append(model.heads(pooled)[1].softmax(-1).cpu())
                elif heads:
                    logits, _, logits_open = model(to_input(x), heads=True)
                    out_open.append(logits_open.softmax(-1).cpu())
                else:
                    logits = model(to_input(x))
                out.append(logits.softmax(-1).cpu())
                out_energy.append(logits.float().logsumexp(-1).neg().cpu())
            if progress is not None:
                progress(len(x))
    finally:
        model.train(was_training)
    k = model.fc.out_features if hasattr(model, "fc") else 0
    probs = torch.cat(out).float().numpy() if out else np.zeros((0, k), np.float32)
    energy = torch.cat(out_energy).numpy() if out_energy else np.zeros(0, np.float32)
    open_probs = pooled_features = None
    if heads:
        open_probs = torch.cat(out_open).numpy() if out_open else np.zeros((0, k + 1), np.float32)
    if features:
        width = model.fc.in_features if hasattr(model, "fc") else 0
        pooled_features = torch.cat(out_features).numpy() if out_features else np.zeros((0, width), np.float32)
    return Outputs(probs, energy, open_probs, pooled_features)
