"""Small models for multichannel sensor windows (ECG, PPG, motion).

Both models are ordered input -> output and expose their parameters in named
*groups* (one per layer: ``stem``, ``block2`` ... ``head``). A sparse subset is a
set of parameter-tensor names; the groups give the vocabulary a subset is
written in, and their order is what the nested subset ladder walks backwards.

The CNN is shaped the way MCUNet-style on-device training expects: early layers
have long feature maps (large activations, few parameters), late layers have
short maps. Training only the late layers is therefore cheap in memory, which is
the property FTTE's memory-sized subsets rely on.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

Params = dict[str, np.ndarray]


class ModelKind(enum.StrEnum):
    CNN = "cnn"
    MLP = "mlp"


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    kind: ModelKind = ModelKind.CNN
    in_channels: int = 3
    window: int = 500
    num_classes: int = 4
    width: int = 24
    hidden: tuple[int, ...] = ()
    """Layer sizes set by the study: the CNN's conv channels per block, the MLP's
    hidden units per layer. Empty: derived from ``width`` (the CNN's
    ``(w, 2w, 4w, 2w)``, the MLP's ``(8w, 4w)``), the models every benchmark uses."""

    def __post_init__(self) -> None:
        for name in ("in_channels", "window", "num_classes", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1")
        if any(size < 1 for size in self.hidden):
            raise ValueError("ModelConfig.hidden sizes must be >= 1")

    def layer_sizes(self) -> tuple[int, ...]:
        if self.hidden:
            return self.hidden
        w = self.width
        return (w, 2 * w, 4 * w, 2 * w) if self.kind is ModelKind.CNN else (8 * w, 4 * w)


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, *, kernel: int, pool: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=kernel // 2)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool1d(pool) if pool > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pool(self.act(self.conv(x)))
        return out


_CNN_POOLS = (4, 4, 2)  # max-pool of the first blocks; later blocks keep their length


def _block_names(count: int) -> list[str]:
    return ["stem"] + [f"block{i}" for i in range(2, count + 1)]


class SensorCNN(nn.Module):
    """1-D CNN: stem -> block2 ... blockN -> global average -> head.

    The default (four blocks from ``width``) is the benchmark model. A block
    pools only while the feature map stays at least as long as the pool, so
    short windows (a 100-sample motion window, even a single time step) build
    the same layers with less pooling; the last block uses kernel 3, the
    others 7.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        sizes = config.layer_sizes()
        self._names = _block_names(len(sizes))
        length, cin = config.window, config.in_channels
        for i, (name, cout) in enumerate(zip(self._names, sizes, strict=True)):
            pool = _CNN_POOLS[i] if i < len(_CNN_POOLS) else 1
            pool = pool if length // pool >= 1 else 1
            kernel = 3 if i == len(sizes) - 1 else 7
            self.add_module(name, _ConvBlock(cin, cout, kernel=kernel, pool=pool))
            length, cin = length // pool, cout
        self.head = nn.Linear(cin, config.num_classes)

    def layers(self) -> list[tuple[str, nn.Module]]:
        blocks = [(name, self.get_submodule(name)) for name in self._names]
        return [*blocks, ("pool", _GlobalAvgPool()), ("head", self.head)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, layer in self.layers():
            x = layer(x)
        return x


class _GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=-1)


class SensorMLP(nn.Module):
    """MLP on a flattened window: a baseline for tiny devices, and the model for tabular data.

    Windows of 64 samples or more are 4x downsampled first (the benchmark
    model); shorter ones, and tabular rows (``window = 1``, one channel per
    feature), are used as they are.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        down = 4 if config.window >= 64 else 1
        sizes = config.layer_sizes()
        self._names = _block_names(len(sizes))
        d_in = config.in_channels * (config.window // down)
        pool: list[nn.Module] = [nn.AvgPool1d(down)] if down > 1 else []
        self.add_module(
            self._names[0], nn.Sequential(*pool, nn.Flatten(), nn.Linear(d_in, sizes[0]), nn.ReLU())
        )
        for name, cin, cout in zip(self._names[1:], sizes[:-1], sizes[1:], strict=True):
            self.add_module(name, nn.Sequential(nn.Linear(cin, cout), nn.ReLU()))
        self.head = nn.Linear(sizes[-1], config.num_classes)

    def layers(self) -> list[tuple[str, nn.Module]]:
        blocks = [(name, self.get_submodule(name)) for name in self._names]
        return [*blocks, ("head", self.head)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, layer in self.layers():
            x = layer(x)
        return x


def build_model(config: ModelConfig, *, seed: int) -> SensorCNN | SensorMLP:
    """Build a model with deterministic initial weights (the seed is explicit)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = SensorCNN(config) if config.kind is ModelKind.CNN else SensorMLP(config)
        # He initialisation for ReLU convs: frozen layers then pass on features of
        # useful scale, which matters when only the last layers are trained.
        generator = torch.Generator().manual_seed(seed)
        for module in model.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def parameter_groups(model: SensorCNN | SensorMLP) -> OrderedDict[str, tuple[str, ...]]:
    """Layer name -> names of its parameter tensors, in forward order."""
    groups: OrderedDict[str, tuple[str, ...]] = OrderedDict()
    for layer_name, layer in model.layers():
        names = tuple(f"{layer_name}.{n}" for n, _ in layer.named_parameters())
        if names:
            groups[layer_name] = names
    return groups


def get_params(model: nn.Module) -> Params:
    """A detached float32 numpy copy of every parameter, in model order."""
    return {
        n: p.detach().cpu().numpy().astype(np.float32, copy=True)
        for n, p in model.named_parameters()
    }


def set_params(model: nn.Module, params: Params, *, strict: bool = True) -> None:
    """Load ``params`` into ``model``; with ``strict`` every parameter must be given."""
    own = dict(model.named_parameters())
    unknown = set(params) - set(own)
    if unknown:
        raise KeyError(f"unknown parameter names: {sorted(unknown)}")
    if strict and set(own) - set(params):
        raise KeyError(f"missing parameter names: {sorted(set(own) - set(params))}")
    with torch.no_grad():
        for name, value in params.items():
            target = own[name]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{name}: shape {value.shape} != {tuple(target.shape)}")
            target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def param_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}
