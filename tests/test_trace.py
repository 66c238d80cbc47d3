"""Front-ends: which one captures a model, what TraceInfo says, fake shapes, and the errors users see."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxopt
from fxopt.input_dims import InputDim
from fxopt.trace import TraceInfo


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


class Branchy(nn.Module):
    """A Python loop over a tensor: symbolic tracing cannot follow it, export can."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)

    def forward(self, x):
        y = self.a(x)
        for t in y.unbind(0):  # iterating a traced value fails under symbolic tracing
            y = y + t
        return y


def test_trace_auto_uses_fx_when_symbolic_tracing_works():
    gm = fxopt.trace(Mlp(), torch.randn(3, 4))
    assert gm.meta["fxopt"]["trace"] == TraceInfo("fx", None, dynamic=(InputDim(0, 0, "batch"),))
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "call_function", "call_module", "output"]
    assert [tuple(n.meta["val"].shape) for n in gm.graph.nodes if n.op != "output"] == [(3, 4), (3, 8), (3, 8), (3, 2)]


def test_trace_auto_falls_back_to_export_and_says_why():
    gm = fxopt.trace(Branchy(), torch.randn(3, 4))
    info = gm.meta["fxopt"]["trace"]
    assert info.frontend == "export"
    assert info.fallback_reason.startswith("fx: TraceError: Proxy object cannot be iterated")
    assert any(n.op == "get_attr" and n.target == "a.weight" for n in gm.graph.nodes)


def test_trace_export_frontend_gives_aten_ops_with_shapes():
    gm = fxopt.trace(Mlp(), torch.randn(3, 4), frontend="export")
    assert gm.meta["fxopt"]["trace"] == TraceInfo("export", None, dynamic=(InputDim(0, 0, "batch"),))
    calls = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert calls == [torch.ops.aten.linear.default, torch.ops.aten.relu.default, torch.ops.aten.linear.default]
    assert all("val" in n.meta for n in gm.graph.nodes if n.op == "call_function")


def test_trace_fx_frontend_on_untraceable_model_raises_with_a_hint():
    with pytest.raises(fxopt.TraceError, match=r"symbolic tracing of Branchy failed \(fx: TraceError: Proxy object "
                                               r"cannot be iterated.*\); try frontend='export' or 'auto'"):
        fxopt.trace(Branchy(), torch.randn(3, 4), frontend="fx")


def test_trace_of_data_dependent_control_flow_names_both_frontends():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)

        def forward(self, x):
            y = self.a(x)
            return y if y.sum() > 0 else -y

    with pytest.raises(fxopt.TraceError) as info:
        fxopt.trace(DataDependent(), torch.randn(3, 4))
    message = str(info.value)
    assert message.startswith("could not capture DataDependent: fx: TraceError: symbolically traced variables "
                              "cannot be used as inputs to control flow; fx with sizes: ")
    assert "; export: " in message
    assert "data-dependent control flow needs torch.cond or a leaf module" in message


def test_trace_with_wrong_input_shape_raises_trace_error():
    with pytest.raises(fxopt.TraceError, match=r"(?s)could not capture Mlp: fx: .*\[3, 5\] X \[4, 8\].*"
                                               r"Check that the example inputs match forward\(\)'s signature"):
        fxopt.trace(Mlp(), torch.randn(3, 5))


def test_trace_export_with_too_many_inputs_raises_trace_error():
    with pytest.raises(fxopt.TraceError, match="could not capture Mlp: export: TypeError: too many positional"):
        fxopt.trace(Mlp(), (torch.randn(3, 4), torch.randn(3, 4)), frontend="export")


@pytest.mark.parametrize("frontend", ["auto", "fx"])
def test_trace_with_too_many_inputs_raises_trace_error(frontend):
    with pytest.raises(fxopt.TraceError, match="Mlp"):
        fxopt.trace(Mlp(), (torch.randn(3, 4), torch.randn(3, 4)), frontend=frontend)


def test_trace_unknown_frontend_lists_the_valid_ones():
    with pytest.raises(fxopt.TraceError, match="unknown frontend 'jit': use 'auto', 'fx' or 'export'"):
        fxopt.trace(Mlp(), torch.randn(3, 4), frontend="jit")  # type: ignore[arg-type]


def test_trace_shape_error_names_the_failing_node():
    with pytest.raises(fxopt.TraceError, match="shape propagation failed at node a:"):
        fxopt.trace(Mlp(), torch.randn(3, 5), frontend="fx")


def test_trace_meta_device_model_gets_shapes_without_real_compute():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4096, 11008), nn.SiLU(), nn.Linear(11008, 4096))
    gm = fxopt.trace(model, torch.randn(2, 16, 4096, device="meta"))
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    assert tuple(out.meta["val"].shape) == (2, 16, 4096)
    assert gm.get_parameter("0.weight").is_meta
    a = fxopt.analyze(model, torch.randn(2, 16, 4096, device="meta"))
    assert [(g.id, g.size, g.exact) for g in a.groups] == [("0.weight/0", 11008, True)]


def test_trace_does_not_modify_the_model():
    model = Mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fxopt.trace(model, torch.randn(3, 4), frontend="export")
    fxopt.trace(model, torch.randn(3, 4), frontend="fx")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model) is Mlp and model.training


def test_analyze_accepts_a_traced_graph_module():
    gm = fxopt.trace(Mlp(), torch.randn(3, 4), frontend="export")
    a = fxopt.analyze(gm, torch.randn(3, 4))
    assert a.gm is gm
    assert [g.id for g in a.groups] == ["a.weight/0"]


class SquareWithIdentityGrad(torch.autograd.Function):
    """x * x forward, straight-through backward (as quantizers and gradient-reversal layers do)."""

    @staticmethod
    def forward(ctx, x):
        return x * x

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_trace_fx_keeps_a_custom_autograd_backward():
    class Net(nn.Module):
        def forward(self, x):
            return SquareWithIdentityGrad.apply(x)

    x = torch.full((2,), 3.0, requires_grad=True)
    gm = fxopt.trace(Net(), torch.randn(2), frontend="fx")
    gm(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]
    buffer = io.BytesIO()
    torch.save(gm, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(x.detach()), x.detach() ** 2, rtol=0, atol=0)


class _AutocastIsland(nn.Module):
    """timm's efficientvit: attention computed in fp32 inside ``torch.autocast(enabled=False)``."""

    def __init__(self, enabled: bool) -> None:
        super().__init__()
        self.a, self.b, self.enabled = nn.Linear(4, 8), nn.Linear(8, 2), enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.enabled):
            h = torch.relu(h.float()) * 2
        return self.b(h.float())


def test_export_autocast_off_region_is_inlined_and_its_channels_prune(rig):
    model, x = _AutocastIsland(enabled=False), torch.randn(3, 4)
    analysis = rig.analyze(model, x, frontend="export")
    assert analysis.barriers == []
    assert rig.members(rig.group(analysis, "a.weight/0")) == {("a.weight", 0, "p"), ("a.bias", 0, "p"),
                                                              ("b.weight", 1, "c")}
    assert all(e == 0 for e in rig.errors(analysis).values())
    torch.testing.assert_close(analysis.gm(x), model(x))


def test_export_autocast_on_region_stays_a_barrier(rig):
    analysis = rig.analyze(_AutocastIsland(enabled=True), torch.randn(3, 4), frontend="export")
    assert [b.node.target.__name__ for b in analysis.barriers] == ["wrap_with_autocast"]


class _UnrolledCell(nn.Module):
    """A hand-written RNN cell unrolled over the sequence: Python needs the length as a number."""

    def __init__(self) -> None:
        super().__init__()
        self.ih, self.hh, self.fc = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.zeros(x.size(0), 6)
        for t in range(x.size(1)):
            h = torch.tanh(self.ih(x[:, t]) + self.hh(h))
        return self.fc(h)


def test_trace_loop_over_a_size_unrolls_in_fx_with_the_examples_sizes(rig):
    """Issue 15: `for t in range(x.size(1))` stopped symbolic tracing and fell back to export (4+ s at 256 steps)."""
    model, x = _UnrolledCell(), torch.randn(2, 5, 4)
    analysis = rig.analyze(model, x)
    info = analysis.gm.meta["fxopt"]["trace"]
    assert (info.frontend, info.specialized) == ("fx", True)
    assert info.fallback_reason == "fx: TypeError: zeros() takes 1 positional argument but 2 were given"
    assert sum(1 for n in analysis.gm.graph.nodes if n.op == "call_module" and n.target == "hh") == 5
    zeros = [n for n in analysis.gm.graph.nodes if n.target is torch.zeros]
    assert len(zeros) == 1 and zeros[0].args == ((2, 6),)  # the initial state stays a factory, not a constant
    [group] = analysis.groups
    assert group.exact and all(e < 1e-5 for e in rig.errors(analysis).values())
    torch.testing.assert_close(analysis.gm(x), model(x))
    small = rig.prune(analysis, {group: [0, 4]})
    assert rig.shapes(small)["hh.weight"] == (4, 4)


def test_trace_shape_propagation_skips_kernels_of_shape_preserving_layers_but_not_their_errors():
    class WrongNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5)

        def forward(self, x):
            return self.bn(self.conv(x))

    with pytest.raises(fxopt.TraceError, match="bn"):
        fxopt.trace(WrongNorm(), torch.randn(1, 3, 4, 4), frontend="fx")
    gm = fxopt.trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU()).eval(),
                     torch.randn(1, 3, 4, 4).to(memory_format=torch.channels_last))
    vals = [n.meta["val"] for n in gm.graph.nodes if n.op == "call_module"]
    assert all(v.shape == (1, 4, 4, 4) for v in vals)
    assert vals[1].stride() == vals[0].stride() == vals[2].stride()


def test_trace_hf_model_with_its_default_cache_config_captures_without_the_cache(rig):
    """Issue 13: every pretrained HF model has use_cache=True, and capture failed on the DynamicCache output."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50)
    torch.manual_seed(0)
    model, ids = LlamaForCausalLM(cfg).eval(), torch.randint(0, 50, (1, 6))
    assert model.config.use_cache is True
    fast = fxopt.optimize(model, ids, compile=False)
    assert model.config.use_cache is True  # switched back on after capture
    assert fast.meta["fxopt"]["trace"].cache_disabled
    assert any("use_cache switched off" in w for w in fxopt.report(fast).warnings)
    torch.testing.assert_close(fast(ids).logits, model(ids, use_cache=False).logits, rtol=1e-4, atol=1e-5)
    small, _ = fxopt.prune(model, (ids,), ratio=0.5)
    assert small(ids).logits.shape == (1, 6, 50)
