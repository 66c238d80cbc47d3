"""Fitting BLAST factors to a dense matrix: a block-low-rank start, then alternating least squares.

BLAST block (i, j) is ``U_i diag(s_ij) V_j^T``. With the other two factors fixed, each of U, V and s is a linear
least-squares problem with small r x r normal equations, so alternating exact minimisations never increase
``||W - BLAST||_F`` (up to a ridge of ~100 machine epsilons that keeps the solves defined). Per iteration:

- U step, per block-row i: ``U_i (sum_j diag(s_ij) V_j^T V_j diag(s_ij)) = sum_j W_ij V_j diag(s_ij)``.
- V step, per block-column j: the same with the roles of U and V (and of i and j) swapped.
- s step, per block: ``(U_i^T U_i * V_j^T V_j) s_ij = diag(U_i^T W_ij V_j)`` (``*`` elementwise).

U and V columns are renormalised after their steps (their scale moves into s), as BLAST's training does. There is
no closed form, so the fit starts from the best of up to three closed-form starts, each completed by an s step:

- shared bases: ``U_i`` = the top left singular vectors of block-row i, ``V_j`` = the top right singular vectors
  of block-column j (they span the right subspaces of a BLAST matrix, but do not diagonalise its blocks);
- joint diagonalisation (``b > 1``, ``r <= min(p, q)``): the shared bases rotated so that they diagonalise the
  projected blocks (Jennrich's algorithm, exact for a BLAST matrix whose factors are in general position);
- Monarch embedding (``r >= b``): slot ``t = l b + c`` holds the l-th singular pair of every block on the c-th
  block diagonal ``j = i + c mod b``, so BLAST starts at least as good as the Monarch fit of rank ``r // b``.

The r x r Gram matrices of the s step are built one block-row at a time (b r^2 memory, not b^2 r^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlastFactors:
    """The three BLAST factors of a b x b grid of p x q blocks with rank r.

    Attributes:
        u: (b, p, r), ``U_i`` per block-row.
        s: (b, b, r), the coupling ``s_ij`` per block.
        v: (b, q, r), ``V_j`` per block-column.
    """

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor

    def blocks(self) -> torch.Tensor:
        """The (b, b, p, q) blocks ``U_i diag(s_ij) V_j^T``."""
        return torch.einsum("ijr,ipr,jqr->ijpq", self.s, self.u, self.v)


@dataclass(frozen=True)
class BlastResult:
    """The refined factors and how the refinement went.

    Attributes:
        factors: the best factors found.
        start_error: relative Frobenius error of the better start.
        error: relative Frobenius error of ``factors``.
        iterations: alternating iterations run.
        converged: whether the relative improvement fell below the tolerance before the iteration limit.
    """

    factors: BlastFactors
    start_error: float
    error: float
    iterations: int
    converged: bool


def refine_blast(blocks: torch.Tensor, rank: int, max_iter: int, tol: float) -> BlastResult:
    """Fit BLAST factors of rank ``rank`` to a (b, b, p, q) grid of blocks.

    Args:
        blocks: W's blocks (already multiplied by the input transform for an activation-aware fit).
        rank: r.
        max_iter: the most alternating iterations (0: the start only).
        tol: stop when an iteration improves the relative error by less than ``tol`` times its value.

    Returns:
        The best factors seen (never worse than the start) and the figures of the refinement.
    """
    b, _, p, q = blocks.shape
    norm = blocks.norm()
    if norm == 0:
        zeros = blocks.new_zeros
        return BlastResult(BlastFactors(zeros(b, p, rank), zeros(b, b, rank), zeros(b, q, rank)), 0.0, 0.0, 0, True)
    starts = [_shared_basis_start(blocks, rank)]
    if b > 1 and rank <= min(p, q):
        starts.append(_eigen_start(blocks, *starts[0]))
    if rank >= b:
        starts.append(_monarch_start(blocks, rank))
    scored = [(_error(blocks, f, norm), f) for f in (_with_coupling(blocks, u, v) for u, v in starts)]
    start_error, best = min(scored, key=lambda pair: pair[0])
    floor = 100 * torch.finfo(blocks.dtype).eps
    error, factors, iterations, converged = start_error, best, 0, start_error <= floor
    while not converged and iterations < max_iter:
        factors = _iterate(blocks, factors)
        iterations += 1
        new_error = _error(blocks, factors, norm)
        converged = error - new_error <= tol * error or new_error <= floor
        if new_error < error:
            best, error = factors, new_error
    return BlastResult(best, start_error, error, iterations, converged)


def _iterate(blocks: torch.Tensor, f: BlastFactors) -> BlastFactors:
    """One U step, V step and s step, each an exact (ridged) least-squares solve."""
    wv = torch.einsum("ijpq,jqr->ijpr", blocks, f.v)
    u = _solve(_coupled_gram(f.s, f.v.mT @ f.v), torch.einsum("ijpr,ijr->ipr", wv, f.s))
    scale = u.norm(dim=1).clamp_min(torch.finfo(u.dtype).tiny)
    u, s = u / scale[:, None, :], f.s * scale[:, None, :]
    wu = torch.einsum("ijpq,ipr->ijqr", blocks, u)
    v = _solve(_coupled_gram(s.transpose(0, 1), u.mT @ u), torch.einsum("ijqr,ijr->jqr", wu, s))
    scale = v.norm(dim=1).clamp_min(torch.finfo(v.dtype).tiny)
    return _with_coupling(blocks, u, v / scale[:, None, :])


def _with_coupling(blocks: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> BlastFactors:
    """The factors with the least-squares coupling s for these U and V."""
    rhs = torch.einsum("ijpq,ipr,jqr->ijr", blocks, u, v)
    utu, vtv = u.mT @ u, v.mT @ v
    s = torch.stack([_solve(utu[i] * vtv, rhs[i][:, None, :])[:, 0, :] for i in range(u.shape[0])])
    return BlastFactors(u, s, v)


def _coupled_gram(s: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``G_i = sum_j (s_ij s_ij^T) * gram_j`` for s (b, b, r) and gram (b, r, r), one row i at a time."""
    return torch.stack([(row[:, :, None] * row[:, None, :] * gram).sum(0) for row in s])


def _solve(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """X with ``X (gram + ridge) = rhs`` for symmetric (..., r, r) grams and (..., k, r) right-hand sides."""
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    mean_diag = gram.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
    ridge = 100 * torch.finfo(gram.dtype).eps * mean_diag + torch.finfo(gram.dtype).tiny
    return torch.linalg.solve(gram + ridge * eye, rhs.mT).mT


def _error(blocks: torch.Tensor, f: BlastFactors, norm: torch.Tensor) -> float:
    return float((blocks - f.blocks()).norm() / norm)


def _shared_basis_start(blocks: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """U_i from block-row i's and V_j from block-column j's top singular vectors (zero-padded to the rank)."""
    b, _, p, q = blocks.shape
    u = torch.linalg.svd(blocks.transpose(1, 2).reshape(b, p, b * q), full_matrices=False).U[..., :rank]
    vh = torch.linalg.svd(blocks.transpose(0, 1).reshape(b, b * p, q), full_matrices=False).Vh[..., :rank, :]
    return _pad(u, rank), _pad(vh.mT, rank)


def _eigen_start(blocks: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bases that jointly diagonalise the blocks projected on the shared bases (Jennrich's algorithm).

    For a BLAST matrix, the projected blocks are ``A_ij = X_i diag(s_ij) Y_j^T`` with r x r X_i, Y_j, so
    ``A_00 A_10^{-1} A_11 A_01^{-1} = X_0 diag(.) X_0^{-1}``: its eigenvectors give X_0, then
    ``X_0^{-1} A_0j`` gives the rows of ``Y_j^T`` and ``A_i0 Y_0^{-T}`` the columns of X_i, all in the same slot
    order. For other matrices it is one more start to compare; non-finite results fall back to the shared bases.
    """
    a = torch.einsum("ipr,ijpq,jqs->ijrs", u, blocks, v)
    inv = torch.linalg.pinv
    pencil = a[0, 0] @ inv(a[1, 0]) @ a[1, 1] @ inv(a[0, 1])
    x0 = torch.linalg.eig(pencil).eigenvectors.real
    y = (inv(x0) @ a[0]).mT  # y[j] = Y_j up to column scales
    x = a[:, 0] @ inv(y[0]).mT  # x[i] = X_i up to column scales
    if not (x.isfinite().all() and y.isfinite().all()):
        return u, v
    return _normalised(u @ x), _normalised(v @ y)


def _normalised(factor: torch.Tensor) -> torch.Tensor:
    return factor / factor.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(factor.dtype).tiny)


def _monarch_start(blocks: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """U and V holding each block's truncated SVD factors, slot ``t = l b + c`` for block diagonal c, level l."""
    b = blocks.shape[0]
    svd_u, sigma, vh = torch.linalg.svd(blocks, full_matrices=False)
    levels = math.ceil(rank / b)
    root = sigma[..., :levels].sqrt()
    left = _pad(svd_u[..., :levels] * root[..., None, :], levels)  # (b, b, p, levels)
    right = _pad((root[..., :, None] * vh[..., :levels, :]).mT, levels)  # (b, b, q, levels)
    t = torch.arange(rank, device=blocks.device)
    diag, level = t % b, t // b
    i = torch.arange(b, device=blocks.device)[:, None]
    u = left[i, (i + diag) % b, :, level].transpose(1, 2)  # u[i, :, t] = left[i, i + c, :, l]
    v = right[(i - diag) % b, i, :, level].transpose(1, 2)  # v[j, :, t] = right[j - c, j, :, l]
    return u, v


def _pad(factor: torch.Tensor, rank: int) -> torch.Tensor:
    """Zero columns appended to the last dimension up to ``rank`` (blocks thinner than the rank)."""
    missing = rank - factor.shape[-1]
    return factor if missing <= 0 else torch.nn.functional.pad(factor, (0, missing))
