"""Calibration: channel statistics and gradients from a few batches of real inputs.

Activations are observed with a ``torch.fx.Interpreter`` over the analysed graph, so any node can be watched
(call_module, functional and ATen nodes alike) without forward hooks. Statistics are reduced on the fly (per
channel sums, squares and, where reconstruction needs it, the Gram matrix), so memory does not grow with the
number of batches. Every run happens in eval mode with the modules' modes restored afterwards: calibration must
never update BatchNorm running statistics of the user's model, whose modules the traced graph shares.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from fxopt.analysis.analysis import Analysis
from fxopt.pruning.units import get_tensor, graph_inputs, split_batch

log = logging.getLogger(__name__)

LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass(frozen=True)
class Calibration:
    """Batches of real data for data-aware criteria and reconstruction.

    Attributes:
        batches: model inputs per batch (a tensor or a tuple of positional inputs); with ``loss_fn`` each batch
            is an ``(inputs, target)`` pair.
        loss_fn: ``loss_fn(output, target) -> scalar`` for gradient-based criteria; without it, the Taylor
            criterion uses half the squared output norm as an unsupervised proxy.
    """

    batches: tuple[Any, ...]
    loss_fn: LossFn | None = None

    @staticmethod
    def of(data: Iterable[Any] | Calibration | None, loss_fn: LossFn | None = None) -> Calibration | None:
        """Wrap an iterable of batches (or pass a Calibration through); ``None`` stays ``None``."""
        if data is None or isinstance(data, Calibration):
            return data
        batches = tuple(data)
        return Calibration(batches, loss_fn) if batches else None

    def inputs(self, batch: Any) -> Any:
        """The model inputs of ``batch``."""
        return batch[0] if self.loss_fn is not None else batch

    def target(self, batch: Any) -> Any:
        """The target of ``batch`` (``None`` without a loss function)."""
        return batch[1] if self.loss_fn is not None else None


@dataclass
class ChannelStats:
    """Running per-channel statistics of one activation, flattened over every dim but the channel dim."""

    count: int = 0
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    gram: torch.Tensor | None = None

    def add(self, x: torch.Tensor, channel_dim: int, with_gram: bool) -> None:
        """Accumulate a batch of activations."""
        rows = x.detach().movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim]).double()
        self.count += rows.shape[0]
        s, q = rows.sum(0), (rows * rows).sum(0)
        self.total = s if self.total is None else self.total + s
        self.squares = q if self.squares is None else self.squares + q
        if with_gram:
            g = rows.T @ rows
            self.gram = g if self.gram is None else self.gram + g

    @property
    def mean(self) -> torch.Tensor:
        """Per-channel mean."""
        assert self.total is not None
        return self.total / max(self.count, 1)

    @property
    def var(self) -> torch.Tensor:
        """Per-channel (population) variance."""
        assert self.squares is not None
        return (self.squares / max(self.count, 1) - self.mean ** 2).clamp_min(0.0)


@dataclass(frozen=True)
class Watch:
    """An activation to observe: node name, channel dim, and whether to keep its Gram matrix."""

    node: str
    channel_dim: int
    gram: bool = False


class _Recorder(fx.Interpreter):
    """Runs the graph and folds watched activations into ChannelStats."""

    def __init__(self, gm: fx.GraphModule, watches: Mapping[str, Watch], stats: dict[str, ChannelStats]) -> None:
        super().__init__(gm)
        self.watches = watches
        self.stats = stats

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        w = self.watches.get(n.name)
        if w is not None and isinstance(result, torch.Tensor) and result.is_floating_point():
            self.stats.setdefault(w.node, ChannelStats()).add(result, w.channel_dim, w.gram)
        return result


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own mode afterwards."""
    modes = {m: m.training for m in module.modules()}
    for m in modes:  # set the flag directly: modules unlifted from torch.export refuse .eval()
        m.training = False
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def activation_stats(analysis: Analysis, calibration: Calibration, watches: Sequence[Watch],
                     module: fx.GraphModule | None = None) -> dict[str, ChannelStats]:
    """Per-channel statistics of the watched activations over every calibration batch.

    Args:
        analysis: the analysis whose graph is run (``module`` may be a copy of ``analysis.gm`` with other weights).
        calibration: the batches.
        watches: which node outputs to observe.
        module: the graph module to run instead of ``analysis.gm`` (same graph).

    Returns:
        ChannelStats per watched node name (absent for nodes that never produced a floating tensor).
    """
    gm = analysis.gm if module is None else module
    by_name = {w.node: w for w in watches}
    stats: dict[str, ChannelStats] = {}
    if not by_name:
        return stats
    with eval_mode(gm), torch.no_grad():
        for batch in calibration.batches:
            for args, _ in split_batch(analysis, graph_inputs(analysis, calibration.inputs(batch))):
                _Recorder(gm, by_name, stats).run(*args)
    return stats


class _Reached(Exception):
    """Raised to stop an interpreter once the wanted node has run."""


class _Capture(fx.Interpreter):
    """Runs a graph only as far as one node and keeps that node's value."""

    def __init__(self, gm: fx.GraphModule, name: str) -> None:
        super().__init__(gm)
        self.name = name
        self.value: Any = None

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name == self.name:
            self.value = result
            raise _Reached
        return result


def capture(gm: fx.GraphModule, args: Sequence[Any], node: str) -> torch.Tensor | None:
    """The value of ``node`` when ``gm`` runs on ``args``, computing nothing after it (call under no_grad)."""
    interp = _Capture(gm, node)
    try:
        interp.run(*args)
    except _Reached:
        pass
    return interp.value if isinstance(interp.value, torch.Tensor) else None


def output_loss(output: Any) -> torch.Tensor:
    """Half the squared norm of every floating output: a label-free loss for gradient criteria."""
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    leaves, _ = torch.utils._pytree.tree_flatten(output)
    terms = [0.5 * t.float().pow(2).mean() for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not terms:
        raise ValueError("the model has no floating-point output to take a gradient of")
    return torch.stack(terms).sum()


def batch_gradients(analysis: Analysis, calibration: Calibration,
                    qualnames: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """For each calibration batch, the loss gradient of each tensor in ``qualnames``.

    Gradients are taken with ``torch.autograd.grad`` so no ``.grad`` field of the user's parameters is touched;
    frozen parameters get ``requires_grad`` only for the duration of the call. Buffers (running statistics)
    are not differentiated.
    """
    gm = analysis.gm
    tensors = {q: t for q in dict.fromkeys(qualnames) if isinstance(t := get_tensor(gm, q), torch.nn.Parameter)
               and t.is_floating_point() and t.device.type != "meta"}
    names = list(tensors)
    flags = {q: tensors[q].requires_grad for q in names}
    try:
        for q in names:
            tensors[q].requires_grad_(True)
        with eval_mode(gm), torch.enable_grad():
            for batch in calibration.batches:
                args = graph_inputs(analysis, calibration.inputs(batch))
                for chunk, (target,) in split_batch(analysis, args, calibration.target(batch)):
                    out = gm(*chunk)
                    loss = calibration.loss_fn(out, target) if calibration.loss_fn is not None else output_loss(out)
                    grads = torch.autograd.grad(loss, [tensors[q] for q in names], allow_unused=True)
                    yield {q: (g if g is not None else torch.zeros_like(tensors[q])).detach()
                           for q, g in zip(names, grads)}
    finally:
        for q in names:
            tensors[q].requires_grad_(flags[q])


@dataclass
class CalibrationCache:
    """Statistics computed once per pruning run and shared by criteria and reconstruction."""

    analysis: Analysis
    calibration: Calibration | None
    stats: dict[str, ChannelStats] = field(default_factory=dict)

    def ensure(self, watches: Sequence[Watch]) -> dict[str, ChannelStats]:
        """Statistics for ``watches``, computing the missing ones (and Gram matrices where asked) in one run."""
        if self.calibration is None:
            raise ValueError("this criterion or reconstruction needs calibration data: pass calibration=batches")
        missing = [w for w in watches if w.node not in self.stats or (w.gram and self.stats[w.node].gram is None)]
        if missing:
            log.debug("calibrating %d activations over %d batches", len(missing), len(self.calibration.batches))
            self.stats.update(activation_stats(self.analysis, self.calibration, missing))
        return self.stats
