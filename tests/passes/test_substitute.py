"""The ``substitute`` pass: every structure on a small MLP, the error budgets, the size caps, the speed gate, auto,
and composition (analysis, zero-invariance, pruning, report, save/load, CLI, 1x1 convolutions)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import fxopt
from fxopt.analysis.analysis import analyze_graph
from fxopt.cli import main
from fxopt.errors import PassError
from fxopt.passes import PassContext, PassManager, PassResult, parse_pass
from fxopt.passes.substitute import SubstitutePass
from fxopt.structured import (
    BTT,
    Blast,
    BlockDiagonal,
    ChannelLinear,
    LowRank,
    Monarch,
    Structure,
    StructuredLinear,
)
from fxopt.targets.registry import get_target
from fxopt.testing import check_zero_invariance

MEMBERS: dict[str, Structure] = {
    "lowrank": LowRank(rank=8), "blockdiag": BlockDiagonal(blocks=4), "monarch": Monarch(blocks=4, rank=2),
    "btt": BTT(rank=2), "blast": Blast(blocks=4, rank=8),
}
LAYERS = {"lowrank": "LowRankLinear", "blockdiag": "BlockDiagonalLinear", "monarch": "MonarchLinear",
          "btt": "BTTLinear", "blast": "BlastLinear"}


def _near(structure: Structure, m: int, n: int, noise: float = 0.02) -> torch.Tensor:
    """A weight of the structure's class plus ``noise`` relative Gaussian noise."""
    w = structure.build(m, n, bias=False).to_dense().detach()
    return w + noise * w.norm() / (m * n) ** 0.5 * torch.randn(m, n)


class Net(nn.Module):
    """A layer too small to replace, then a 128x128 output layer without bias (so the model's output error is the
    layer's output error)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.small, self.big = nn.Linear(16, 128), nn.Linear(128, 128, bias=False)
        with torch.no_grad():
            self.big.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.big(torch.relu(self.small(x)))


class MLP(nn.Module):
    """Two hidden layers of 128 between a too-small input layer and the output layer."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor) -> None:
        super().__init__()
        self.inp, self.fc1, self.fc2, self.out = (nn.Linear(16, 128), nn.Linear(128, 128), nn.Linear(128, 128),
                                                  nn.Linear(128, 10))
        with torch.no_grad():
            self.fc1.weight.copy_(first)
            self.fc2.weight.copy_(second)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.fc2(F.relu(self.fc1(F.relu(self.inp(x)))))))


def _run(model: nn.Module, spec: str, x: torch.Tensor, target: str = "cpu",
         calibration: Any = None) -> tuple[fx.GraphModule, PassResult]:
    gm = fxopt.trace(model, x)
    run = PassManager(spec).run(gm, (x,), PassContext(target=get_target(target), calibration=calibration))
    return gm, run.results[-1]


def _run_on(gm: fx.GraphModule, spec: str, x: torch.Tensor) -> PassResult:
    return PassManager(spec).run(gm, (x,), PassContext(target=get_target("cpu"))).results[-1]


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("family", list(MEMBERS))
def test_substitute_every_structure_replaces_the_layer_within_its_error(family: str) -> None:
    model, x = Net(_near(MEMBERS[family], 128, 128)).eval(), torch.randn(32, 16)
    gm, result = _run(model, f"substitute(structure='{family}',speed_gate=False)", x, calibration=[x])
    assert type(gm.big).__name__ == LAYERS[family] and isinstance(gm.small, nn.Linear)
    (row,) = result.metrics["substituted"]
    assert row["layer"] == "big" and row["params"][1] < row["params"][0] // 2 and row["flops"][1] < row["flops"][0]
    with torch.no_grad():
        error = _error(gm(x), model(x))
    # calibrated on x, the budget bounds the layer's output error on x, which is the model's here
    assert error == pytest.approx(row["error"], rel=1e-3) and error <= 0.1
    assert result.metrics["model_error"] == pytest.approx(error, rel=1e-4)
    assert [s.reason for s in result.skips] == ["too small: 128x16 (min_features=64)"]


def test_substitute_without_calibration_the_budget_bounds_the_weight_error() -> None:
    model, x = Net(_near(LowRank(rank=8), 128, 128, noise=0.05)).eval(), torch.randn(32, 16)
    gm, result = _run(model, "substitute(structure='lowrank',speed_gate=False)", x)
    (row,) = result.metrics["substituted"]
    dense, fitted = model.big.weight, gm.big.to_dense()
    assert _error(fitted, dense) == pytest.approx(row["error"], rel=1e-3) and row["error"] <= 0.1
    assert gm.big.rank == 8  # the smallest rank within the budget: the structure's own


def test_substitute_layer_over_the_budget_stays_dense_with_the_reason() -> None:
    model, x = Net(torch.randn(128, 128)).eval(), torch.randn(32, 16)
    gm, result = _run(model, "substitute(structure='lowrank',max_error=0.05,speed_gate=False)", x)
    assert type(gm.big) is nn.Linear and not result.changed
    (skip,) = [s for s in result.skips if s.node == "big"]
    assert skip.reason.startswith("over budget: LowRank needs rank")
    assert "x the dense parameters); rank 63 gives error" in skip.reason
    _, capped = _run(model, "substitute(structure='monarch',max_error=0.5,params=0.1,speed_gate=False)", x)
    (skip,) = [s for s in capped.skips if s.node == "big"]
    assert skip.reason.startswith("over budget: Monarch(blocks=2) needs rank") and "(caps: params=0.1)" in skip.reason


def test_substitute_size_cap_sets_the_rank_without_an_error_budget() -> None:
    model, x = Net(torch.randn(128, 128)).eval(), torch.randn(32, 16)
    gm, result = _run(model, "substitute(structure='lowrank',max_error=None,params=0.25,speed_gate=False)", x)
    (row,) = result.metrics["substituted"]
    assert gm.big.rank == 16 and row["params"] == (16384, 4096)  # the largest rank with 1/4 of the parameters
    _, by_flops = _run(model, "substitute(structure='lowrank',max_error=None,flops=0.25,speed_gate=False)", x)
    assert by_flops.metrics["substituted"][0]["flops"] == (32 * 2 * 16384, 32 * 2 * 4096)


def test_substitute_speed_gate_keeps_layers_the_target_runs_slower_dense() -> None:
    """One token through a 128x128 layer on an H100 is launch-bound: two small kernels lose to one."""
    model, x = Net(_near(LowRank(rank=8), 128, 128)).eval(), torch.randn(1, 16)
    gm, result = _run(model, "substitute(structure='lowrank')", x, target="h100")
    assert type(gm.big) is nn.Linear
    (skip,) = [s for s in result.skips if s.node == "big"]
    # refused before its SVD: even rank 1 is slower than the dense layer on the target
    assert skip.reason.startswith("not faster: LowRank is not faster than the dense layer even at rank 1: predicted")
    assert skip.reason.endswith("on h100")
    gm, result = _run(model, "substitute(structure='lowrank',speed_gate=False)", x, target="h100")
    assert isinstance(gm.big, StructuredLinear)
    gm, result = _run(model, "substitute(structure='lowrank')", torch.randn(256, 16), target="cpu")
    row = result.metrics["substituted"][0]
    assert row["time_us"][1] < row["time_us"][0] and row["timed"] == "predicted on cpu"


def test_substitute_measure_times_the_layer_on_this_machine() -> None:
    model, x = Net(_near(LowRank(rank=8), 128, 128)).eval(), torch.randn(64, 16)
    _, result = _run(model, "substitute(structure='lowrank',speed_gate=False,measure=True)", x)
    (row,) = result.metrics["substituted"]
    assert row["timed"] == "measured on this machine" and all(t > 0 for t in row["time_us"])


def test_substitute_auto_picks_a_structure_per_layer() -> None:
    first, second = _near(LowRank(rank=4), 128, 128, 0.01), _near(BlockDiagonal(blocks=4), 128, 128, 0.01)
    model, x = MLP(first, second).eval(), torch.randn(32, 16)
    gm, result = _run(model, "substitute(speed_gate=False)", x)
    assert (type(gm.fc1).__name__, type(gm.fc2).__name__) == ("LowRankLinear", "BlockDiagonalLinear")
    assert {r["layer"]: r["structure"] for r in result.metrics["substituted"]} == {
        "fc1": "LowRank(rank=4)", "fc2": "BlockDiagonal(blocks=4)"}


def test_substitute_layers_option_and_min_features_choose_what_is_considered() -> None:
    model, x = MLP(_near(LowRank(rank=4), 128, 128), _near(LowRank(rank=4), 128, 128)).eval(), torch.randn(8, 16)
    gm, result = _run(model, "substitute(structure='lowrank',layers=('fc2',),speed_gate=False)", x)
    assert isinstance(gm.fc1, nn.Linear) and isinstance(gm.fc2, StructuredLinear)
    assert result.metrics["layers_considered"] == 1 and not result.skips
    spec = "substitute(structure='lowrank',layers=('fc*', 'out'),min_features=200,speed_gate=False)"
    gm, result = _run(model, spec, x)
    assert sorted(s.node for s in result.skips) == ["fc1", "fc2", "out"] and not result.changed


def test_substitute_whole_model_budget_drops_the_least_accurate_layers() -> None:
    first, second = _near(LowRank(rank=4), 128, 128, 0.01), _near(LowRank(rank=4), 128, 128, 0.08)
    model, x = MLP(first, second).eval(), torch.randn(32, 16)
    _, loose = _run(model, "substitute(structure='lowrank',speed_gate=False)", x)
    assert loose.metrics["layers_substituted"] == 2
    budget = loose.metrics["model_error"] * 0.5
    gm, result = _run(model, f"substitute(structure='lowrank',speed_gate=False,model_error={budget!r})", x)
    assert isinstance(gm.fc1, StructuredLinear) and isinstance(gm.fc2, nn.Linear)
    (skip,) = [s for s in result.skips if s.node == "fc2"]
    assert skip.reason.startswith("over model budget: the model's output error is")
    with torch.no_grad():
        assert _error(gm(x), model(x)) == pytest.approx(result.metrics["model_error"], rel=1e-4)
    assert result.metrics["model_error"] <= budget


def test_substitute_functional_linear_is_skipped_with_the_reason() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(128, 128))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.weight)

    _, result = _run(Functional(), "substitute(speed_gate=False)", torch.randn(4, 128))
    assert [s.reason for s in result.skips] == [
        "unsupported: functional linear (only nn.Linear and 1x1 nn.Conv modules are replaced)"]


@pytest.mark.parametrize("spec", [
    "substitute",
    "substitute(structure='monarch',max_error=0.05)",
    "substitute(structure='blast',max_error=None,params=0.5,layers=('*.fc1', 'head'),blocks=(4,))",
    "substitute(max_error=0.2,model_error=0.1,flops=0.5,min_features=16,scaling='rms',speed_gate=False,measure=True)",
])
def test_substitute_spec_round_trips(spec: str) -> None:
    p = parse_pass(spec)
    assert isinstance(p, SubstitutePass) and parse_pass(str(p)) == p and str(p) == spec


@pytest.mark.parametrize("spec, message", [
    ("substitute(structure='butterfly')", "structure must be one of lowrank, blockdiag, monarch, btt, blast, auto"),
    ("substitute(max_error=None)", "give an error budget (max_error) or a size cap"),
    ("substitute(params=1.5)", "params must be a fraction in (0, 1)"),
    ("substitute(max_error=0)", "max_error must be > 0"),
    ("substitute(blocks=(1,))", "blocks integers > 1"),
    ("substitute(scaling='std')", "scaling must be one of rms, whiten"),
])
def test_substitute_refuses_bad_options(spec: str, message: str) -> None:
    with pytest.raises(PassError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_pass(spec)


def test_substitute_through_optimize_report_lists_each_layer(tmp_path: Path) -> None:
    model = MLP(_near(Monarch(blocks=4, rank=2), 128, 128), _near(LowRank(rank=4), 128, 128)).eval()
    x = torch.randn(64, 16)
    fast = fxopt.optimize(model, x, substitute={"structure": "auto", "speed_gate": False}, compile=False)
    text = fxopt.report(fast).to_text()
    assert "      substituted:" in text
    line = next(s for s in text.splitlines() if s.strip().startswith("layer fc2"))
    assert line.strip().startswith("layer fc2, structure LowRank(rank=4), params 16,512 -> 1,152, flops ")
    assert ", error 0.0" in line and ", time_us " in line and line.endswith("timed predicted on cpu")
    html = tmp_path / "r.html"
    fxopt.report(fast).to_html(str(html), graph=False, measure=False)
    page = html.read_text()
    assert "<th>structure</th>" in page and "<td>LowRank(rank=4)</td>" in page


@pytest.mark.parametrize("suffix", [".pt2", ".fx"])
def test_substitute_result_saves_and_loads(tmp_path: Path, suffix: str) -> None:
    model = MLP(_near(Monarch(blocks=4, rank=2), 128, 128), _near(LowRank(rank=4), 128, 128)).eval()
    x = torch.randn(8, 16)
    fast = fxopt.optimize(model, x, substitute={"structure": "monarch", "speed_gate": False}, compile=False)
    assert isinstance(fast.fc1, StructuredLinear)
    again = fxopt.load(fxopt.save(fast, tmp_path / f"m{suffix}"))
    with torch.no_grad():
        torch.testing.assert_close(again(x), fast(x))
        torch.testing.assert_close(again(torch.randn(3, 16)).shape, torch.Size([3, 10]))
    if suffix == ".fx":
        assert type(again.fc1).__name__ == "MonarchLinear"


def test_substitute_analysis_of_a_substituted_model_is_exact_and_zero_invariant() -> None:
    model = MLP(_near(Monarch(blocks=4, rank=2), 128, 128), _near(LowRank(rank=4), 128, 128)).eval()
    x = torch.randn(8, 16)
    gm, _ = _run(model, "substitute(structure='monarch',speed_gate=False,layers=('fc1',))", x)
    _run_on(gm, "substitute(structure='lowrank',speed_gate=False,layers=('fc2',))", x)
    assert (type(gm.fc1).__name__, type(gm.fc2).__name__) == ("MonarchLinear", "LowRankLinear")
    analysis = analyze_graph(gm, (x,))
    assert analysis.barriers == [] and all(g.exact for g in analysis.groups)
    producers = {m.qualname for g in analysis.groups for m in g.members if m.role == "producer"}
    assert {"fc1.left", "fc2.u"} <= producers
    checks = check_zero_invariance(analysis)
    assert len(checks) == len(analysis.groups) and all(c.passed for c in checks)


def test_substitute_pruning_after_substitution_slices_within_blocks() -> None:
    model = MLP(_near(Monarch(blocks=4, rank=2), 128, 128), _near(LowRank(rank=4), 128, 128)).eval()
    x = torch.randn(8, 16)
    gm = fxopt.trace(model, x)
    run = PassManager("substitute(structure='auto',speed_gate=False),prune(ratio=0.5)").run(gm, (x,))
    assert run.results[1].metrics["groups_pruned"] >= 2
    assert tuple(gm.fc1.left.shape) == (4, 16, 8) and gm.fc1.out_features == 64
    assert tuple(gm.fc2.u.shape) == (64, 4) and gm.fc2.in_features == 64
    with torch.no_grad():
        assert gm(x).shape == (8, 10)


def test_substitute_1x1_convolution_becomes_a_structured_channel_linear() -> None:
    class Conv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.mix, self.head = nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 128, 1), nn.Conv2d(128, 8, 3)
            with torch.no_grad():
                self.mix.weight.copy_(_near(LowRank(rank=6), 128, 64)[:, :, None, None])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.mix(F.relu(self.stem(x)))))

    model, x = Conv().eval(), torch.randn(2, 3, 8, 8)
    gm, result = _run(model, "substitute(structure='lowrank',speed_gate=False)", x)
    assert isinstance(gm.mix, ChannelLinear) and gm.mix.linear.rank == 6
    assert {s.node: s.reason for s in result.skips} == {
        n: "unsupported: only 1x1 convolutions with stride 1, no padding and one group are linears over channels"
        for n in ("stem", "head")}
    with torch.no_grad():
        assert _error(gm(x), model(x)) < 0.05
    analysis = analyze_graph(gm, (x,))
    assert analysis.barriers == [] and all(c.passed for c in check_zero_invariance(analysis))


def test_substitute_from_the_cli_with_an_error_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def mlp():\n"
        "    torch.manual_seed(0)\n"
        "    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))\n"
        "    with torch.no_grad():\n"
        "        model[0].weight.copy_(torch.randn(256, 4) @ torch.randn(4, 128))\n"
        "    return model, torch.randn(256, 128)\n")
    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    code = main(["optimize", "models.py:mlp", "--substitute", "auto", "--max-error", "0.05", "--no-compile",
                 "--no-measure", "--out", "m.fx"], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    text = out.getvalue()
    assert "substitute(max_error=0.05): changed" in text
    assert "layer 0, structure LowRank(rank=4)" in text
    loaded = fxopt.load("m.fx")
    assert type(loaded.get_submodule("0")).__name__ == "LowRankLinear"
    code = main(["optimize", "models.py:mlp", "--max-error", "0.05", "--no-compile", "--no-measure"],
                stdout=io.StringIO(), stderr=err)
    assert code != 0 and "--max-error is the substitution's error budget: give --substitute too" in err.getvalue()


def test_substituted_model_captures_again_with_fx_keeping_the_layers_whole() -> None:
    import fxopt
    from fxopt.structured import LowRankLinear

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 96), torch.nn.ReLU(), torch.nn.Linear(96, 8)).eval()
    model[0] = LowRankLinear.from_dense(model[0].weight.detach(), model[0].bias.detach(), rank=8)
    x = torch.randn(3, 96)
    gm = fxopt.trace(model, x)
    assert gm.meta["fxopt"]["trace"].frontend == "fx"
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["0", "1", "2"]
    torch.testing.assert_close(gm(x), model(x))
