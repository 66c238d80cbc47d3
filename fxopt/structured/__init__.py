"""Structured replacements for dense linear layers, fitted to pretrained weights.

A dense weight W (m x n) is replaced by a layer whose weight has a structure with fewer parameters and
multiply-adds, fitted to W (optionally weighted by calibration inputs), and applied without ever forming W:

- ``LowRankLinear``: ``W = U V`` of rank r; ``r (m + n)`` parameters and multiply-adds per token; truncated SVD.
- ``BlockDiagonalLinear``: b diagonal blocks; ``m n / b``; W's diagonal blocks.
- ``MonarchLinear``: b x b grid of rank-r blocks (Dao et al.); ``b r (m + n)``; one batched SVD of the b^2 blocks.
- ``BTTLinear``: m1 x n0 grid of rank-r blocks (2-core BTT, Qiu et al.); ``r (m1 n + n0 m)``; batched block SVDs.
- ``BlastLinear``: ``A_ij = U_i diag(s_ij) V_j^T`` (BLAST, Lee et al.); ``r (m + n + b^2)``; start, then ALS.

A bias adds m parameters. ``flops(tokens)`` counts a multiply-add as 2 FLOPs plus one addition per output for the bias,
as ``fxopt.analysis.cost`` does.

Low-rank, Monarch and BTT are one family, block-low-rank grids (``grid``), fitted in closed form by one batched
truncated SVD of W's blocks; the error is known from the discarded singular values, so ``choose_rank`` picks a rank
from an error budget without trial fits. Block-diagonal keeps W's diagonal blocks. BLAST starts from a
block-low-rank fit and refines by alternating least squares (``blast_fit``).

Every fit takes optional calibration inputs (``activations``): ``scaling="rms"`` scales W's columns by the
inputs' RMS, ``scaling="whiten"`` by the Cholesky factor of their second moment (block-diagonal along the
structure's column groups; exact for low-rank, least squares for block-diagonal), so that the fit minimises the
error on the data rather than on the weights (``calibration``).

Modules: ``base`` (layer base class, structure contract, cost conventions), ``errors`` (``StructureError``),
``calibration`` (input statistics and transforms), ``grid`` (block-low-rank fit and grid layer), ``lowrank``,
``blockdiag``, ``monarch``, ``btt``, ``blast`` (one structure each: options, layer, fit), ``blast_fit``
(BLAST's iterative fit), ``fit`` (the entry point and its report), ``conv`` (1x1 convolutions), ``speed`` (a
layer's predicted time: the target's roofline over the ATen ops its forward runs), ``choose`` (per layer, the
fastest structure and rank within an error budget and size caps that beats the dense layer; the ``substitute``
pass runs it).

Importing the package registers the layers with fxopt's op registry (``fxopt.ops.structured``): each states where
its features live in its factors (``factor_layout``), so graphs holding them are analysed and pruned within blocks.

Example:
    >>> from fxopt.structured import Monarch, fit, choose_rank
    >>> w = torch.randn(256, 256)
    >>> result = fit(w, choose_rank(w, Monarch(blocks=4, rank=1), budget=0.5))
    >>> result.report.error <= 0.5, result.layer(torch.randn(3, 256)).shape
    (True, torch.Size([3, 256]))
"""

from fxopt.ops.structured import register_structured
from fxopt.structured.base import (
    Approximation,
    Structure,
    StructuredLinear,
    dense_flops,
)
from fxopt.structured.blast import Blast, BlastLinear
from fxopt.structured.blockdiag import BlockDiagonal, BlockDiagonalLinear
from fxopt.structured.btt import BTT, BTTLinear
from fxopt.structured.calibration import (
    InputStats,
    InputTransform,
    Scaling,
    output_error,
)
from fxopt.structured.conv import ChannelLinear, conv1x1_weight
from fxopt.structured.errors import StructureError
from fxopt.structured.fit import Fit, FitReport, choose_rank, error_by_rank, fit
from fxopt.structured.grid import GridLinear, GridStructure
from fxopt.structured.lowrank import LowRank, LowRankLinear
from fxopt.structured.monarch import Monarch, MonarchLinear

register_structured(LowRankLinear, BlockDiagonalLinear, MonarchLinear, BTTLinear, BlastLinear, GridLinear,
                    ChannelLinear)

__all__ = [
    "BTT", "Approximation", "BTTLinear", "Blast", "BlastLinear", "BlockDiagonal", "BlockDiagonalLinear",
    "ChannelLinear", "Fit", "FitReport", "GridLinear", "GridStructure", "InputStats", "InputTransform", "LowRank",
    "LowRankLinear", "Monarch", "MonarchLinear", "Scaling", "Structure", "StructureError", "StructuredLinear",
    "choose_rank", "conv1x1_weight", "dense_flops", "error_by_rank", "fit", "output_error",
]
