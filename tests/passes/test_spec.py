"""Pipeline specs: parsing, printing, round trips, and errors that name the valid choices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fxopt.errors import PassError
from fxopt.passes import PASSES, Pass, PassResult, format_pipeline, parse_pipeline, register_pass
from fxopt.passes.cleanup import CleanupPass
from fxopt.passes.lower import LowerPass


def test_parse_pipeline_reads_names_and_options() -> None:
    passes = parse_pipeline("cleanup, fuse(siblings=True,bn_input=False),lower(mode='max-autotune')")
    assert [p.name for p in passes] == ["cleanup", "fuse", "lower"]
    assert passes[1].siblings is True and passes[1].bn_input is False
    assert passes[2].mode == "max-autotune"


def test_parse_pipeline_bare_word_value_is_a_string() -> None:
    (lower,) = parse_pipeline("lower(mode=max-autotune)")
    assert lower == LowerPass(mode="max-autotune")


def test_parse_pipeline_unknown_pass_lists_registered_names() -> None:
    with pytest.raises(PassError, match=r"unknown pass 'fusion'.*cleanup.*fuse"):
        parse_pipeline("cleanup,fusion")


def test_parse_pipeline_unknown_option_lists_options() -> None:
    with pytest.raises(PassError, match=r"no option ratio.*max_elements"):
        parse_pipeline("cleanup(ratio=0.5)")


def test_parse_pipeline_mixed_list_of_objects_and_specs() -> None:
    passes = parse_pipeline([CleanupPass(constants=False), "fuse,lower"])
    assert format_pipeline(passes) == "cleanup(constants=False),fuse,lower"


@pytest.mark.parametrize("bad", ["cleanup(", "fuse(siblings)", "cleanup(identities=True,identities=False)", ",,x"])
def test_parse_pipeline_malformed_spec_raises(bad: str) -> None:
    with pytest.raises(PassError):
        parse_pipeline(bad)


@given(identities=st.booleans(), constants=st.booleans(), max_elements=st.integers(1, 1 << 30),
       mode=st.sampled_from([None, "max-autotune", "reduce-overhead", "a,b(c)"]), freezing=st.booleans())
def test_spec_round_trip_parse_of_str_is_equal(identities: bool, constants: bool, max_elements: int,
                                               mode: str | None, freezing: bool) -> None:
    pipeline = [CleanupPass(identities=identities, constants=constants, max_elements=max_elements),
                LowerPass(mode=mode, freezing=freezing)]
    assert parse_pipeline(format_pipeline(pipeline)) == pipeline
    assert parse_pipeline(",".join(str(p) for p in pipeline)) == pipeline


def test_register_pass_custom_pass_is_usable_by_name() -> None:
    with PASSES.scoped():
        @register_pass
        @dataclass(frozen=True)
        class Count(Pass):
            name: ClassVar[str] = "count_nodes"
            scale: int = 1

            def run(self, gm, ctx):  # type: ignore[no-untyped-def]
                return PassResult(str(self), False, metrics={"n": self.scale * len(gm.graph.nodes)})

        assert parse_pipeline("count_nodes(scale=2)") == [Count(scale=2)]
    assert "count_nodes" not in PASSES


def test_register_pass_requires_frozen_dataclass() -> None:
    class Loose(Pass):
        name: ClassVar[str] = "loose"

    with PASSES.scoped(), pytest.raises(PassError, match="frozen"):
        register_pass(Loose)


def test_register_pass_name_taken_by_another_class_raises() -> None:
    @dataclass(frozen=True)
    class Impostor(Pass):
        name: ClassVar[str] = "cleanup"

    with PASSES.scoped(), pytest.raises(PassError, match="already registered"):
        register_pass(Impostor)
