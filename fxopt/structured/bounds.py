"""Lower bounds on BLAST's error at every rank, from singular values: what no BLAST fit of a rank can beat.

BLAST has no closed form, so the rank search fits. A fit is the expensive step, and most of the ranks it would try
can be ruled out from one batched SVD. Block (i, j) of a BLAST matrix is ``U_i diag(s_ij) V_j^T``, so its block-row i
is ``U_i [diag(s_i1) V_1^T ... diag(s_ib) V_b^T]``: rank r at most. The same holds for block-column j. The error of a
BLAST matrix of rank r is therefore at least the error of the best rank-r approximation of every block-row (the
discarded squared singular values, summed over the block-rows), and likewise over block-columns. Every block has
rank r at most as well, so the error of the Monarch fit of rank ``min(r, p, q)`` on the same grid (its exact,
closed-form error curve) is a third bound; the chooser passes that curve in, as it has it already.

With calibration data, the error the budget bounds is the output error ``||(W - B) G^{1/2}|| / ||W G^{1/2}||`` for
the inputs' second moment G. Block-row i of ``(W - B) G^{1/2}`` is ``W_i G^{1/2}`` minus a rank-r matrix, so the
block-row bound holds with the eigenvalues of ``W_i G W_i^T`` (the squared singular values of ``W_i G^{1/2}``).
"""

from __future__ import annotations

import torch

from fxopt.structured.calibration import InputStats


def blast_error_floor(weight: torch.Tensor, blocks: int, stats: InputStats | None = None,
                      grid_errors: torch.Tensor | None = None) -> torch.Tensor:
    """A lower bound on the relative error of any BLAST matrix with ``blocks`` x ``blocks`` blocks, at every rank.

    Args:
        weight: the (m, n) dense weight; ``blocks`` divides m and n.
        blocks: b.
        stats: calibration input statistics: bound the output error on them instead of the weight error.
        grid_errors: the exact error of the best b x b grid of rank-k blocks at k = 0..min(p, q) (Monarch's
            ``error_by_rank`` without calibration data), for the third bound; ``None``: not used. With ``stats``
            it is not a bound on the output error, and must be ``None``.

    Returns:
        (R + 1,) float64 tensor for ranks 0..R, ``R = b min(m / b, n / b)`` (BLAST's largest rank); entry r is at
        most the error (weight error, or output error with ``stats``) of every BLAST fit of rank r. Non-increasing.

    Example:
        >>> w = torch.randn(64, 64)
        >>> floor = blast_error_floor(w, 4)
        >>> floor.shape, round(float(floor[0]), 4), float(floor[-1])
        (torch.Size([65]), 1.0, 0.0)
    """
    m, n = weight.shape
    p, q = m // blocks, n // blocks
    ranks = blocks * min(p, q) + 1
    with torch.no_grad():
        work = weight.detach().to(torch.promote_types(weight.dtype, torch.float32))
        rows = work.reshape(blocks, p, n)
        if stats is None:
            total = work.square().sum()
            tails = _tails(torch.linalg.svdvals(rows).square(), ranks)
            tails = torch.maximum(tails, _tails(torch.linalg.svdvals(work.reshape(m, blocks, q).transpose(0, 1))
                                                .square(), ranks))
        else:
            gram = stats.gram.to(device=work.device, dtype=work.dtype)
            total = ((work @ gram) * work).sum()
            tails = _tails(torch.linalg.eigvalsh(rows @ gram @ rows.mT).flip(-1).clamp_min(0), ranks)
        if total > 0:
            floor = (tails / float(total)).clamp(0, 1).sqrt().cpu()
        else:
            floor = torch.zeros(ranks, dtype=torch.float64)
        if grid_errors is not None:
            grid = grid_errors.to(torch.float64).cpu()
            floor = torch.maximum(floor, grid[torch.arange(ranks).clamp(max=len(grid) - 1)])
        return floor


def _tails(squared: torch.Tensor, ranks: int) -> torch.Tensor:
    """``sum over blocks of sum_{k >= r} squared[:, k]`` for r = 0..ranks-1, for (blocks, k) squared singular values
    in descending order."""
    per_rank = squared.double().sum(0)
    tail = per_rank.flip(0).cumsum(0).flip(0)  # tail[r] = sum_{k >= r}
    out = torch.zeros(ranks, dtype=tail.dtype, device=tail.device)
    out[: min(ranks, len(tail))] = tail[:ranks]
    return out
