"""Local training of a sparse subset.

The model is split at the first layer that holds a trained tensor:
- the *frozen prefix* runs without autograd, streamed in micro-batches (the
  windows themselves are gathered a micro-batch at a time), so it saves
  nothing for backward and its working memory is one micro-batch wide;
- the *trainable suffix* runs with autograd; inside it, frozen tensors have
  ``requires_grad=False`` so they get no gradient and no optimizer state.

A step may accumulate gradients over micro-batches of the suffix
(``LocalTrainConfig.micro_batch``): the same gradient as one pass over the
batch (up to float rounding; no layer here depends on batch statistics), with
saved activations one micro-batch wide. ``sgd_step`` is the one step both
training and ``fedward.tinytrain.memory`` run, so what is measured is what runs.

The same split is what Opacus wraps for DP-SGD (per-sample gradients only for
the suffix), and what ``fedward.tinytrain.memory`` measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .models import Params, SensorCNN, SensorMLP, get_params, set_params

Model = SensorCNN | SensorMLP


@dataclass(frozen=True, kw_only=True)
class LocalTrainConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    prefix_micro_batch: int = 1
    micro_batch: int | None = None  # gradient accumulation; None: the whole batch at once

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.prefix_micro_batch < 1:
            raise ValueError("epochs, batch_size and prefix_micro_batch must be >= 1")
        if self.micro_batch is not None and not 1 <= self.micro_batch <= self.batch_size:
            raise ValueError("micro_batch must be in 1..batch_size (or None)")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise ValueError("lr must be a positive finite number")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum must be in [0, 1)")


@dataclass(frozen=True)
class SplitModel:
    prefix: nn.Sequential
    suffix: nn.Sequential
    trainable: tuple[str, ...]
    # suffix parameter name -> model parameter name
    suffix_names: dict[str, str]


def split_for_training(model: Model, trainable: Sequence[str]) -> SplitModel:
    """Split ``model`` so that everything before the first trained layer is frozen."""
    trainable_set = set(trainable)
    known = {n for n, _ in model.named_parameters()}
    if not trainable_set or trainable_set - known:
        raise ValueError(
            f"trainable names must be non-empty and known: {sorted(trainable_set - known)}"
        )
    layers = model.layers()
    first = next(
        i
        for i, (name, layer) in enumerate(layers)
        if any(f"{name}.{p}" in trainable_set for p, _ in layer.named_parameters())
    )
    prefix = nn.Sequential(*[layer for _, layer in layers[:first]])
    suffix = nn.Sequential()
    suffix_names: dict[str, str] = {}
    for name, layer in layers[first:]:
        suffix.add_module(name, layer)
        for p_name, _ in layer.named_parameters():
            suffix_names[f"{name}.{p_name}"] = f"{name}.{p_name}"
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable_set)
    return SplitModel(
        prefix=prefix,
        suffix=suffix,
        trainable=tuple(n for n, _ in model.named_parameters() if n in trainable_set),
        suffix_names=suffix_names,
    )


def frozen_features(prefix: nn.Sequential, x: torch.Tensor, *, micro_batch: int) -> torch.Tensor:
    """Run the frozen prefix without autograd, a micro-batch at a time."""
    if len(prefix) == 0:
        return x
    with torch.no_grad():
        return torch.cat([prefix(x[i : i + micro_batch]) for i in range(0, len(x), micro_batch)])


def gathered_features(
    prefix: nn.Sequential, x: torch.Tensor, idx: torch.Tensor, *, micro_batch: int
) -> torch.Tensor:
    """``frozen_features`` of ``x[idx]``, gathering the windows a micro-batch at a time.

    Without a frozen prefix the suffix needs the windows themselves (one copy).
    """
    if len(prefix) == 0:
        return x[idx]
    with torch.no_grad():
        return torch.cat(
            [prefix(x[idx[i : i + micro_batch]]) for i in range(0, len(idx), micro_batch)]
        )


def sgd_step(
    split: SplitModel,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    *,
    micro_batch: int | None,
    prefix_micro_batch: int,
) -> float:
    """One optimizer step on the windows ``idx``; gradients accumulated over micro-batches.

    Returns the batch's mean loss. Each micro-batch's mean loss is weighted by
    its share of the batch, so the accumulated gradient is the batch's.
    """
    optimizer.zero_grad(set_to_none=True)
    size = len(idx) if micro_batch is None else micro_batch
    total = 0.0
    for i in range(0, len(idx), size):
        chunk = idx[i : i + size]
        features = gathered_features(split.prefix, x, chunk, micro_batch=prefix_micro_batch)
        loss = nn.functional.cross_entropy(split.suffix(features), y[chunk])
        if len(chunk) != len(idx):
            loss = loss * (len(chunk) / len(idx))
        loss.backward()
        total += float(loss.detach())
    optimizer.step()
    return total


@dataclass(frozen=True)
class LocalTrainResult:
    delta: Params  # trained tensors only: new - base
    num_samples: int
    steps: int
    mean_loss: float


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def train_subset(
    model: Model,
    base: Params,
    trainable: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    *,
    config: LocalTrainConfig,
    seed: int,
) -> LocalTrainResult:
    """Plain (non-DP) local SGD on ``trainable``, starting from ``base``."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError("x and y must be non-empty and of equal length")
    set_params(model, base)
    split = split_for_training(model, trainable)
    params = [p for p in split.suffix.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    steps, loss_sum = 0, 0.0
    split.suffix.train()
    for _ in range(config.epochs):
        for idx in batches(len(xt), config.batch_size, generator):
            loss_sum += sgd_step(
                split,
                optimizer,
                xt,
                yt,
                idx,
                micro_batch=config.micro_batch,
                prefix_micro_batch=config.prefix_micro_batch,
            )
            steps += 1
    new = get_params(model)
    delta = {n: new[n] - base[n] for n in split.trainable}
    return LocalTrainResult(
        delta=delta, num_samples=len(x), steps=steps, mean_loss=loss_sum / max(steps, 1)
    )


def evaluate(
    model: Model, params: Params, x: np.ndarray, y: np.ndarray, *, batch_size: int = 512
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``params`` on held-out data."""
    set_params(model, params)
    model.eval()
    correct, loss_sum = 0, 0.0
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32))
            yb = torch.from_numpy(np.ascontiguousarray(y[i : i + batch_size], dtype=np.int64))
            logits = model(xb)
            loss_sum += float(loss_fn(logits, yb))
            correct += int((logits.argmax(dim=1) == yb).sum())
    return correct / len(x), loss_sum / len(x)
