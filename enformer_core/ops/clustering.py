"""Pure functions for differentiable clustering.

Everything a clustering backbone does to a set of points is one of four steps, and each step
lives here exactly once so that EnFormer and the baselines (Context Clusters, FEC,
ClusterFormer) share the maths:

* similarity:   ``cosine_similarity`` / ``gaussian_log_likelihood`` between centres and points;
* assignment:   ``softmax_assign`` / ``sigmoid_assign`` / ``hard_assign`` turn similarities
  into weights ``A[m, n]`` plus the per-centre normaliser (one function per rule);
* aggregation:  ``aggregate`` (dense weights, batched matmul) or ``segment_aggregate`` (hard
  assignment: a segment sum, torch-scatter when installed, pure PyTorch otherwise);
* dispatch:     ``consensus`` (soft, EnFormer) or ``gather_dispatch`` (hard, CoC/FEC).

Shapes: ``b`` folded batch (batch x heads), ``M`` centres, ``N`` points, ``d`` feature width.
Centres are ``(b, M, d)``, points ``(b, N, d)``, similarities/assignments ``(b, M, N)``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import native
from .fused import inference

try:  # optional accelerator for the hard-assignment segment sum
    import torch_scatter  # type: ignore

    HAS_TORCH_SCATTER = True
except Exception:  # pragma: no cover - depends on the environment
    torch_scatter = None
    HAS_TORCH_SCATTER = False

_EPS = 1e-7  # the published normaliser epsilon of the soft rules


def _native(x: torch.Tensor) -> bool:
    """Inference on a float32 CPU tensor (no autograd, nothing traced) with the compiled
    kernels available: :mod:`~enformer_core.ops.native` computes the step in one pass."""
    return inference(x) and native.supports(x)


def unit_vectors(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``x / max(||x||, eps)`` along the last dim: ``F.normalize``'s maths (same values and
    gradients), written out because ``F.normalize``'s norm kernel is ~10x slower on CPU for
    the small, strided ``(b, N, d)`` tensors of a clustering step (in CPU inference, one
    compiled pass: :func:`~enformer_core.ops.native.unit_rows`)."""
    if _native(x):
        return native.unit_rows(x, eps)
    return x / x.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(eps)


class _CosineSimilarity(torch.autograd.Function):
    """``unit(C) unit(P)^T`` saving only ``C``, ``P`` and their norms: the unit vectors are
    recomputed in backward (the composed ops keep ~3 point-sized tensors per call)."""

    @staticmethod
    def forward(ctx, centres, points, eps: float):
        rc = centres.pow(2).sum(-1, keepdim=True).sqrt_().clamp_min_(eps)
        rp = points.pow(2).sum(-1, keepdim=True).sqrt_().clamp_min_(eps)
        ctx.save_for_backward(centres, points, rc, rp)
        ctx.eps = eps
        return torch.bmm(centres / rc, (points / rp).transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        centres, points, rc, rp = ctx.saved_tensors
        grads = []
        for x, r, g_unit, need in (
                (centres, rc, lambda: torch.bmm(grad, points / rp), ctx.needs_input_grad[0]),
                (points, rp, lambda: torch.bmm(grad.transpose(1, 2), centres / rc),
                 ctx.needs_input_grad[1])):
            if not need:
                grads.append(None)
                continue
            g, u = g_unit(), x / r
            # d(x / max(|x|, eps)): (g - u (u.g)) / |x|, or g / eps where the norm is clamped
            radial = (u * g).sum(-1, keepdim=True) * (r > ctx.eps)
            grads.append((g - u * radial) / r)
        return grads[0], grads[1], None


def cosine_similarity(centres: torch.Tensor, points: torch.Tensor,
                      eps: float = 1e-12) -> torch.Tensor:
    """``cos(centres[m], points[n])`` as a ``(b, M, N)`` batched matmul (the values and
    gradients of ``F.normalize`` + ``bmm``, with less saved for backward)."""
    if torch.is_grad_enabled() and not torch.jit.is_tracing() and \
            not torch.compiler.is_compiling() and \
            not torch.is_autocast_enabled(points.device.type):
        return _CosineSimilarity.apply(centres, points, eps)
    return torch.bmm(unit_vectors(centres, eps), unit_vectors(points, eps).transpose(1, 2))


def scaled_cosine_similarity(centres: torch.Tensor, points: torch.Tensor, alpha: torch.Tensor,
                             beta: torch.Tensor) -> torch.Tensor:
    """``S[m, n] = alpha[m] cos(centres[m], points[n]) + beta[m]``, ``(b, M, N)``.  In
    inference the scale goes into the unit centres and the offset into the matmul
    (``baddbmm(beta, alpha * unit(C), unit(P)^T)``: one op on ``(b, M, N)`` instead of three;
    the same value up to float rounding)."""
    if inference(centres):
        dt = centres.dtype
        return torch.baddbmm(beta.to(dt).view(1, -1, 1),
                             unit_vectors(centres) * alpha.to(dt).view(1, -1, 1),
                             unit_vectors(points).transpose(1, 2))
    return alpha.view(1, -1, 1) * cosine_similarity(centres, points) + beta.view(1, -1, 1)


def gaussian_log_likelihood(centres: torch.Tensor, points: torch.Tensor,
                            log_vars: torch.Tensor) -> torch.Tensor:
    """Diagonal-Gaussian log-likelihood (up to a constant) of every point under every centre.

    ``L[m, n] = -1/2 (sum_j (p_j - c_j)^2 exp(-log_var[m, j]) + sum_j log_var[m, j])``,
    expanded into matmuls so no ``(b, M, N, d)`` temporary is ever built.
    ``log_vars`` is ``(M, d)`` (shared across the folded batch).
    """
    log_vars = log_vars.to(points.dtype)
    inv_var = torch.exp(-log_vars).unsqueeze(0)  # (1, M, d)
    pp = torch.bmm(inv_var.expand(points.shape[0], -1, -1), (points * points).transpose(1, 2))
    pc = torch.bmm(centres * inv_var, points.transpose(1, 2))
    cc = (centres * centres * inv_var).sum(-1, keepdim=True)
    sq = pp - 2 * pc + cc
    return -0.5 * (sq + log_vars.sum(-1).view(1, -1, 1))


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel samples shaped like ``like``: ``-log(-log(U))``, ``U ~ U(0, 1)``.

    The same distribution ``F.gumbel_softmax`` draws (as ``-log(Exp(1))``), but PyTorch's
    CPU ``exponential_`` is ~4x slower than ``rand`` + two logs at these sizes.
    """
    u = torch.rand_like(like).clamp_(min=torch.finfo(like.dtype).tiny)
    return u.log_().neg_().log_().neg_()


def argmax_centres(x: torch.Tensor) -> torch.Tensor:
    """Index of the first maximum over dim 1, keepdim (``max`` is 4-13x faster than ``argmax``
    on CPU for a reduction over this non-innermost dim)."""
    return x.max(dim=1, keepdim=True).indices


def one_hot_argmax(x: torch.Tensor) -> torch.Tensor:
    """``one_hot(argmax over dim 1)`` in ``x``'s dtype, the first maximum on ties.

    On CPU, ``x == amax(x)`` is about 3x faster than the indices ``max`` computes; it is used
    when every column has exactly one maximum, and exact ties (a blank image pools equal
    centres) or NaN columns take the index path, so the result is always the same.
    """
    if x.device.type == 'cpu' and x.numel():
        hit = x == x.amax(dim=1, keepdim=True)
        if not hit.sum(dim=1).ne(1).any():
            return hit.to(x.dtype)
    return torch.zeros_like(x).scatter_(1, argmax_centres(x), 1.0)


def hard_mask(sim: torch.Tensor, training: bool, gumbel: bool = True) -> torch.Tensor:
    """One-hot assignment over the centre axis (dim 1).

    Training (with ``gumbel``): straight-through Gumbel-softmax (tau 1), as published: the
    forward value is ``one_hot(argmax(S + G))``, the gradient that of ``softmax(S + G)``.
    Evaluation: ``one_hot(argmax S)`` so inference is deterministic (the published code samples
    Gumbel noise at evaluation too).
    """
    if training and gumbel:
        soft = (sim + gumbel_noise(sim)).softmax(dim=1)
        hard = torch.zeros_like(sim).scatter_(1, argmax_centres(soft), 1.0)
        return hard - soft.detach() + soft
    return one_hot_argmax(sim)


# The assignment rules: similarities (b, M, N) -> weights A (b, M, N) and the per-centre
# normaliser (b, M) of the centre update ``(init + A @ values) / denom``.  The base
# clusterings differ only here (each subclass of ``BaseClustering`` calls one).
def softmax_assign(sim: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fuzzy (and probabilistic, on log-likelihoods): ``A = softmax_m(S)``,
    normaliser ``sum_n A + 1e-7`` (in CPU inference both in one compiled pass)."""
    if _native(sim):
        a, sums = native.softmax_centres(sim, rowsum=True)
        return a, sums.add_(_EPS)
    a = sim.softmax(dim=1)
    return a, a.sum(-1) + _EPS


def sigmoid_assign(sim: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Possibilistic: independent memberships ``A = sigmoid(S)``, normaliser
    ``sum_n A + 1e-7``."""
    a = torch.sigmoid(sim)
    return a, a.sum(-1) + _EPS


def hard_assign(sim: torch.Tensor, training: bool = False,
                gumbel: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Partitional: ``A = sigmoid(S) * Hm`` with ``Hm`` one-hot over centres
    (:func:`hard_mask`), normaliser ``sum_n Hm + 1`` (the initial centre counts once)."""
    if not training and _native(sim):            # (CPU inference: one compiled pass)
        weights, count = native.hard_assign(sim)
        return weights, count.add_(1.0)
    mask = hard_mask(sim, training, gumbel)
    return torch.sigmoid(sim) * mask, mask.sum(-1) + 1.0


def aggregate(weights: torch.Tensor, values: torch.Tensor, init_centres: torch.Tensor,
              denom: torch.Tensor) -> torch.Tensor:
    """``Z[m] = (U[m] + sum_n A[m, n] V[n]) / denom[m]`` as one ``baddbmm``."""
    return torch.baddbmm(init_centres, weights, values) / denom.unsqueeze(-1)


def consensus(centres: torch.Tensor, queries: torch.Tensor, alpha: torch.Tensor,
              beta: torch.Tensor) -> torch.Tensor:
    """Consensus aggregation: fuse all base clusterings' centres back into the points.

    ``G[m, n] = alpha[m] cos(Z[m], q_n) + beta[m]``, ``Gamma = softmax_m G``,
    ``Y[n] = sum_m Gamma[m, n] Z[m]``: two batched matmuls, never a ``(b, d, M, N)`` temporary.
    Returns ``(b, N, d)``.
    """
    cos = cosine_similarity(centres, queries)
    if _native(cos):    # scale, offset and softmax in one compiled pass
        gamma = native.softmax_centres(cos, alpha.to(cos.dtype), beta.to(cos.dtype))
    else:
        gamma = (cos * alpha.view(1, -1, 1) + beta.view(1, -1, 1)).softmax(dim=1)
    return torch.bmm(gamma.transpose(1, 2), centres)


def consensus_reference(centres: torch.Tensor, queries: torch.Tensor, alpha: torch.Tensor,
                        beta: torch.Tensor) -> torch.Tensor:
    """The published broadcast form of :func:`consensus` (materialises ``(b, d, M, N)``).

    Kept only as the reference the fast path is tested against.
    """
    c = F.normalize(centres, dim=-1, eps=1e-12)
    q = F.normalize(queries, dim=-1, eps=1e-12)
    cos = (c.transpose(1, 2).unsqueeze(-1) * q.transpose(1, 2).unsqueeze(2)).sum(1)  # b M N
    gamma = (cos * alpha.view(1, -1, 1) + beta.view(1, -1, 1)).softmax(dim=1)
    return (gamma.unsqueeze(1) * centres.transpose(1, 2).unsqueeze(-1)).sum(2).transpose(1, 2)


# --------------------------------------------------------------------------------------
# Hard assignment as a segment sum (Context Clusters / FEC): O(N d) instead of O(M N d).
# --------------------------------------------------------------------------------------
def segment_sum(src: torch.Tensor, index: torch.Tensor, num_segments: int,
                use_scatter: Optional[bool] = None) -> torch.Tensor:
    """Sum rows of ``src`` (b, N, d) into ``num_segments`` buckets given ``index`` (b, N).

    Uses torch-scatter when installed (``use_scatter=None``), else ``Tensor.index_add_``;
    both give the same result (tests compare them).
    """
    b, n, d = src.shape
    if use_scatter is None:
        use_scatter = HAS_TORCH_SCATTER
    if use_scatter:
        if not HAS_TORCH_SCATTER:
            raise RuntimeError('use_scatter=True but torch-scatter is not installed')
        return torch_scatter.scatter_add(src, index.unsqueeze(-1).expand(-1, -1, d), dim=1,
                                         dim_size=num_segments)
    flat_index = (index + torch.arange(b, device=index.device).view(b, 1) * num_segments)
    out = src.new_zeros(b * num_segments, d)
    out.index_add_(0, flat_index.reshape(-1), src.reshape(b * n, d))
    return out.view(b, num_segments, d)


def segment_aggregate(values: torch.Tensor, index: torch.Tensor, weight: Optional[torch.Tensor],
                      init_centres: torch.Tensor, use_scatter: Optional[bool] = None
                      ) -> torch.Tensor:
    """Hard-assignment centre update ``g_i = (v_i + sum_{j in i} w_j v_j) / (1 + sum_{j in i} w_j)``.

    ``values`` (b, N, d), ``index`` (b, N) centre of each point, ``weight`` (b, N) or ``None``
    for the unweighted (FEC) mean, ``init_centres`` (b, M, d).
    """
    m = init_centres.shape[1]
    w = values.new_ones(values.shape[:2]) if weight is None else weight
    num = segment_sum(values * w.unsqueeze(-1), index, m, use_scatter)
    den = segment_sum(w.unsqueeze(-1), index, m, use_scatter)
    return (init_centres + num) / (1.0 + den)


def segment_aggregate_reference(values: torch.Tensor, index: torch.Tensor,
                                weight: Optional[torch.Tensor],
                                init_centres: torch.Tensor) -> torch.Tensor:
    """The published broadcast form of :func:`segment_aggregate` (a ``(b, M, N, d)`` product)."""
    m = init_centres.shape[1]
    mask = F.one_hot(index, m).transpose(1, 2).to(values.dtype)  # b M N
    w = mask if weight is None else mask * weight.unsqueeze(1)
    num = (w.unsqueeze(-1) * values.unsqueeze(1)).sum(2)
    return (init_centres + num) / (1.0 + w.sum(-1, keepdim=True))


def gather_dispatch(centres: torch.Tensor, index: torch.Tensor,
                    weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Send every point its centre: ``p'_j = w_j * g_{i(j)}`` (b, N, d)."""
    out = torch.gather(centres, 1, index.unsqueeze(-1).expand(-1, -1, centres.shape[-1]))
    return out if weight is None else out * weight.unsqueeze(-1)
