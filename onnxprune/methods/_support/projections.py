"""LC's C steps: projections of the weights onto the compression set, as pure tensor math.

Every function takes the pruned tensors as a ``dict[name, Tensor]`` and returns a dict of the
same shapes (new tensors, inputs untouched); the tensors are treated as one concatenated vector
w, because LC's budget is global, not per layer.

- ℓ0 constraint   Π(w) = argmin ||w − θ||²  s.t. ||θ||_0 <= κ: keep the κ entries of largest
  |w| across all tensors jointly, zero the rest (ties: the earlier entry in dict/flat order wins).
- ℓ1 constraint   Π(w) = argmin ||w − θ||²  s.t. ||θ||_1 <= r: the Euclidean projection onto the
  ℓ1 ball (Duchi et al. 2008): soft threshold at the τ for which ||θ||_1 = r.
- ℓ0 penalty      argmin α||θ||_0 + μ/2||w − θ||²: hard threshold, keep |w| > sqrt(2α/μ).
- ℓ1 penalty      argmin α||θ||_1 + μ/2||w − θ||²: soft threshold at α/μ.
- group ℓ0        keep the κ groups (channels) of largest ℓ2 norm, a group being a set of slices
  of several tensors; zero every slice of the other groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Tensors = dict[str, torch.Tensor]
# one channel group's members: (tensor name, axis, index along that axis)
GroupSlices = Sequence[tuple[str, int, int]]


def _flat(tensors: Tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors.values()])


def _unflat(flat: torch.Tensor, like: Tensors) -> Tensors:
    out, offset = {}, 0
    for name, t in like.items():
        out[name] = flat[offset : offset + t.numel()].reshape(t.shape).to(t.dtype)
        offset += t.numel()
    return out


def global_topk_mask(tensors: Tensors, kappa: int) -> Tensors:
    """Boolean masks keeping the κ largest |values| jointly across all tensors.

    Ties at the threshold keep the earlier entries in dict/flat order (what a stable descending
    sort keeps). The κ-th largest |w| is found by radix selection on the bit patterns of |w|
    (:func:`_kth_largest_abs`), so no concatenated copy is made: every temporary is one chunk
    of one tensor (a sort of the concatenation held 5 copies of the weights, in values and int64
    indices; even ``torch.kthvalue`` copies its input and allocates int64 indices)."""
    n = sum(t.numel() for t in tensors.values())
    kappa = max(0, min(int(kappa), n))
    if kappa in (0, n):
        return {name: torch.full_like(t, kappa == n, dtype=torch.bool) for name, t in tensors.items()}
    threshold = _kth_largest_abs(tensors, kappa)
    masks, above = {}, 0
    for name, t in tensors.items():
        flat = t.detach().reshape(-1)
        keep = torch.empty(flat.numel(), dtype=torch.bool, device=flat.device)
        for start in range(0, flat.numel(), _CHUNK):
            keep[start:start + _CHUNK] = flat[start:start + _CHUNK].abs() > threshold
        above += int(keep.sum())
        masks[name] = keep.view(t.shape)
    need = kappa - above
    for name, t in tensors.items():  # ties: the earliest in flat order, chunked (ties may be most entries)
        flat, keep = t.detach().reshape(-1), masks[name].view(-1)
        for start in range(0, flat.numel(), _CHUNK):
            if need <= 0:
                return masks
            ties = (flat[start:start + _CHUNK].abs() == threshold).nonzero().flatten()[:need]
            keep[start + ties] = True
            need -= len(ties)
    return masks


_CHUNK = 1 << 22  # elements per temporary (a chunk's int64 patterns: 32 MiB)
_BITS = {torch.float16: (torch.int16, 16), torch.bfloat16: (torch.int16, 16), torch.float32: (torch.int32, 32),
         torch.float64: (torch.int64, 64)}


def _kth_largest_abs(tensors: Tensors, kappa: int) -> torch.Tensor:
    """The κ-th largest |value| over all tensors (a 0-d tensor of their dtype, on their device).

    Radix selection: the bit patterns of non-negative floats order as the floats do (NaN above
    +inf, as a descending sort puts it first), so the κ-th largest pattern is fixed 16 bits at a
    time from the top: count the next 16-bit digit of every pattern matching the prefix found
    so far (``bincount``), take the digit where the running count from the top reaches the
    rank still needed. Two passes over the weights for float32, one chunk's temporaries at a
    time."""
    dtype = next(iter(tensors.values())).dtype
    if any(t.dtype != dtype for t in tensors.values()) or dtype not in _BITS:
        flat = torch.cat([t.detach().reshape(-1).abs() for t in tensors.values()])  # mixed: plain path
        return torch.kthvalue(flat.double() if flat.dtype in (torch.float16, torch.bfloat16) else flat,
                              flat.numel() - kappa + 1).values.to(flat.dtype)
    int_dtype, width = _BITS[dtype]
    prefix, rank = 0, kappa  # the pattern's bits found so far; its rank among the patterns matching them
    device = next(iter(tensors.values())).device
    for shift in range(width - 16, -1, -16):
        counts = torch.zeros(1 << 16, dtype=torch.int64, device=device)
        for t in tensors.values():
            flat = t.detach().reshape(-1)
            for start in range(0, flat.numel(), _CHUNK):
                bits = flat[start:start + _CHUNK].abs().view(int_dtype).long()  # >= 0: no sign bit
                if shift + 16 < width:  # only the patterns that match the prefix found so far
                    bits = bits[(bits >> (shift + 16)) == prefix]
                bits >>= shift
                bits &= 0xFFFF
                counts += torch.bincount(bits, minlength=1 << 16)
        from_top = counts.flip(0).cumsum(0)  # from_top[i]: patterns whose digit >= 65535 - i
        index = int(torch.searchsorted(from_top, torch.tensor([rank], device=device)).item())
        digit = 0xFFFF - index
        rank -= int(from_top[index - 1]) if index > 0 else 0
        prefix = (prefix << 16) | digit
    if prefix >= 1 << (width - 1):  # back to the signed pattern the float view reads
        prefix -= 1 << width
    return torch.tensor(prefix, dtype=int_dtype, device=device).view(dtype)


def l0_constraint(tensors: Tensors, kappa: int) -> Tensors:
    """Projection onto {θ : ||θ||_0 <= κ}: the global top-κ by magnitude."""
    masks = global_topk_mask(tensors, kappa)
    return {n: t.detach() * masks[n] for n, t in tensors.items()}


def l1_ball(tensors: Tensors, radius: float) -> Tensors:
    """Euclidean projection onto {θ : ||θ||_1 <= r} (sort-based, exact)."""
    flat = _flat(tensors)
    a = flat.abs()
    if a.sum() <= radius:
        return {n: t.detach().clone() for n, t in tensors.items()}
    u = torch.sort(a, descending=True).values
    css = torch.cumsum(u, 0)
    ks = torch.arange(1, u.numel() + 1, device=u.device, dtype=u.dtype)
    # largest k with u_k > (css_k − r)/k gives the threshold of the soft threshold
    rho = int(torch.nonzero(u * ks > css - radius).max())
    tau = (css[rho] - radius) / (rho + 1)
    return _unflat(torch.sign(flat) * (a - tau).clamp_min(0), tensors)


def l0_penalty(tensors: Tensors, alpha: float, mu: float) -> Tensors:
    """Proximal step of α||θ||_0: keep entries with w² > 2α/μ (cost of keeping < cost of zeroing)."""
    thr = math.sqrt(2.0 * alpha / mu)
    return {n: t.detach() * (t.detach().abs() > thr) for n, t in tensors.items()}


def l1_penalty(tensors: Tensors, alpha: float, mu: float) -> Tensors:
    """Proximal step of α||θ||_1: soft threshold at α/μ."""
    thr = alpha / mu
    return {n: torch.sign(t.detach()) * (t.detach().abs() - thr).clamp_min(0) for n, t in tensors.items()}


def group_sq_norms(tensors: Tensors, groups: Sequence[GroupSlices]) -> torch.Tensor:
    """Squared ℓ2 norm of each group (sum over its slices)."""
    norms = []
    for members in groups:
        total = torch.zeros((), dtype=torch.float64)
        for name, axis, index in members:
            total = total + tensors[name].detach().select(axis, index).double().pow(2).sum().cpu()
        norms.append(total)
    return torch.stack(norms) if norms else torch.zeros(0, dtype=torch.float64)


def group_topk_keep(tensors: Tensors, groups: Sequence[GroupSlices], kappa: int) -> torch.Tensor:
    """Boolean per group: the κ groups of largest ℓ2 norm (stable ties)."""
    sq = group_sq_norms(tensors, groups)
    keep = torch.zeros(len(groups), dtype=torch.bool)
    order = torch.sort(sq, descending=True, stable=True).indices
    keep[order[: max(0, min(int(kappa), len(groups)))]] = True
    return keep


def zero_groups(tensors: Tensors, groups: Sequence[GroupSlices], keep: torch.Tensor) -> Tensors:
    """Copies of the tensors with every slice of the groups not kept set to zero."""
    out = {n: t.detach().clone() for n, t in tensors.items()}
    for members, kept in zip(groups, keep.tolist()):
        if not kept:
            for name, axis, index in members:
                out[name].select(axis, index).zero_()
    return out


def group_l0_constraint(tensors: Tensors, groups: Sequence[GroupSlices], kappa: int) -> Tensors:
    """Projection onto "at most κ groups nonzero": zero all but the κ largest-norm groups."""
    return zero_groups(tensors, groups, group_topk_keep(tensors, groups, kappa))
