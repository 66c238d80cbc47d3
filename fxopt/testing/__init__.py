"""Tools to prove passes correct: output equivalence and the zero-invariance oracle."""

from fxopt.equivalence import TOLERANCES, Difference, assert_equivalent
from fxopt.testing.zero_invariance import GroupCheck, check_zero_invariance

__all__ = ["TOLERANCES", "Difference", "GroupCheck", "assert_equivalent", "check_zero_invariance"]
