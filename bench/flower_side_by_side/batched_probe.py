"""Would batching simulated clients speed up the side-by-side's local work? A probe.

Times one SGD step's forward and backward for ``--clients`` clients (each its
own parameters, its own batch of ``--batch`` windows) three ways, alternated
``--repeats`` times in one process with one torch thread:

- ``loop``: one client after another through the model's own modules
  (what ``fedward.tinytrain.training.train_subset`` runs);
- ``vmap``: ``torch.func.vmap`` of ``grad`` of ``functional_call`` over the
  stacked per-client parameters (the "batched clients" design: one batched
  computation for every client);
- ``bmm``: a hand-batched SensorCNN (convolutions as im2col + ``baddbmm``
  over the client dimension, channels-last, max-pool by reshape).

It prints each way's median time, its ratio to ``loop``, and the largest
per-client gradient difference from ``loop`` (relative to the gradient's
largest entry): the batched ways compute the same step up to float rounding
(where rounding flips which window a max-pool picks, that client's gradient
differs by more: with the defaults, one client in 40, and there the loop was
the one farther from a float64 computation).
Batching pays where per-operation dispatch dominates (tiny layers); on this
model at batch 32 the convolutions' arithmetic dominates, which batching
does not reduce.

Usage::

    .venv/bin/python bench/flower_side_by_side/batched_probe.py --clients 40
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fedward.tinytrain.models import ModelConfig, build_model
from fedward.tinytrain.runtime import limit_threads

Grads = list[torch.Tensor]  # per parameter, stacked over clients


def _conv_block_cl(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *, pad: int, pool: int
) -> torch.Tensor:
    """Conv1d + ReLU + max-pool for every client at once; h: (clients, batch, length, in)."""
    clients, batch, _, cin = h.shape
    cout, kernel = w.shape[1], w.shape[3]
    cols = F.pad(h, (0, 0, pad, pad)).unfold(2, kernel, 1)  # clients, batch, out_len, in, k
    out_len = cols.shape[2]
    cols = cols.reshape(clients, batch * out_len, cin * kernel)
    flat = w.reshape(clients, cout, cin * kernel).transpose(1, 2)
    out = torch.baddbmm(b.unsqueeze(1), cols, flat).view(clients, batch, out_len, cout).relu()
    if pool > 1:
        pooled = out_len // pool
        out = out[:, :, : pooled * pool].reshape(clients, batch, pooled, pool, cout).max(3).values
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=24, help="SensorCNN width (24: the task's)")
    args = parser.parse_args()
    limit_threads(1)
    config = ModelConfig(width=args.width)  # width 24: the side-by-side's SensorCNN
    model = build_model(config, seed=0)
    names = [n for n, _ in model.named_parameters()]
    clients, batch = args.clients, args.batch
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(clients, batch, config.in_channels, config.window, generator=generator)
    y = torch.randint(0, config.num_classes, (clients, batch), generator=generator)
    stacked = {
        n: (p.detach() + 0.01 * torch.randn((clients, *p.shape), generator=generator))
        for n, p in model.named_parameters()
    }
    layers: list[tuple[str, int, int]] = []  # conv blocks: name, padding, max-pool
    for name, block in model.layers():
        conv = getattr(block, "conv", None)
        if isinstance(conv, nn.Conv1d):
            pool = block.get_submodule("pool")
            kernel = pool.kernel_size if isinstance(pool, nn.MaxPool1d) else 1
            padding = conv.padding[0] if isinstance(conv.padding, tuple) else 0
            layers.append((name, int(padding), int(kernel) if isinstance(kernel, int) else 1))

    def loop() -> Grads:
        out: list[list[torch.Tensor]] = []
        for c in range(clients):
            params = {n: stacked[n][c].clone().requires_grad_(True) for n in names}
            loss = F.cross_entropy(functional_call(model, params, (x[c],)), y[c])
            out.append(list(torch.autograd.grad(loss, list(params.values()))))
        return [torch.stack([g[i] for g in out]) for i in range(len(names))]

    def one_loss(
        params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor
    ) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, params, (xb,)), yb)

    batched_grad = vmap(grad(one_loss))

    def vmapped() -> Grads:
        g = batched_grad(stacked, x, y)
        return [g[n] for n in names]

    def bmm() -> Grads:
        params = {n: stacked[n].clone().requires_grad_(True) for n in names}
        h = x.transpose(2, 3)
        for name, pad, pool in layers:
            w, b = params[f"{name}.conv.weight"], params[f"{name}.conv.bias"]
            h = _conv_block_cl(h, w, b, pad=pad, pool=pool)
        logits = torch.baddbmm(
            params["head.bias"].unsqueeze(1), h.mean(2), params["head.weight"].transpose(1, 2)
        )
        loss = F.cross_entropy(logits.reshape(clients * batch, -1), y.reshape(-1), reduction="sum")
        return list(torch.autograd.grad(loss / batch, list(params.values())))

    ways: dict[str, Callable[[], Grads]] = {"loop": loop, "vmap": vmapped, "bmm": bmm}
    reference = loop()
    for way in ways.values():  # warm-up (vmap traces on its first call)
        way()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            started = time.perf_counter()
            way()
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["loop"])
    print(
        f"SensorCNN width {args.width}, {clients} clients x batch {batch}, one torch thread, "
        f"{args.repeats} alternations"
    )
    for name, way in ways.items():
        got = way()
        diff = max(
            float((g - r).abs().max() / r.abs().max()) for g, r in zip(got, reference, strict=True)
        )
        median = statistics.median(times[name])
        print(
            f"{name:5s} median {median * 1e3:8.1f} ms  vs loop {median / base:5.2f}x  "
            f"largest relative gradient difference {diff:.1e}"
        )


if __name__ == "__main__":
    main()
