"""Greedy non-maximum suppression, single-class and class-wise (batched).

Order is deterministic: boxes are visited by decreasing score, equal scores by increasing index
(a stable sort), and the returned indices follow that order. A box is suppressed when its IoU
with an already kept box is strictly greater than the threshold (torchvision's rule).

The torch path returns exactly what the slow reference (:mod:`omniseg.ops.nms_reference`) does:
IoUs are computed in float64 on the CPU with the same formula, so kept sets and order are
identical and reproducible. It avoids both the all-pairs IoU matrix and a per-box Python loop:

1. *Candidate pairs by a sweep.* A pair can only have IoU > t >= 0 if the boxes overlap; more
   sharply, IoU <= overlap_x / width of either box, so with x1_p <= x1_q it needs
   x1_q - x1_p < (1 - t) w_p (likewise for x2, y1, y2). Boxes sorted by (group, x1) give each box
   a contiguous window of partners (``searchsorted``); the other three bounds filter the pairs
   and the exact IoU decides the rest. The bounds carry a relative slack of 1e-9, far above
   float64 rounding, so no pair whose computed IoU exceeds t is ever dropped (they are used for
   t >= 1e-6 and sides >= 1e-100, where the products stay normal floats; elsewhere the plain
   overlap window x1_q < x2_p, exact by itself, is used). Classes (levels,
   images) are separated by integer sort keys (group, rank of x1), the exact form of the
   coordinate offsets batched NMS usually adds; coordinates themselves are never shifted.
2. *Greedy resolution without a per-box loop.* Boxes are resolved in visiting-order blocks. A
   block's own "p suppresses q" edges go through the fixed-point iteration
   keep[q] = not any(keep[p] for edges p -> q), started from all-true (the iteration Cluster-NMS
   uses, Zheng et al., arXiv:2005.03572): after r rounds every box whose longest suppression
   chain is shorter than r is final, and the unique fixed point is the greedy result. The
   block's kept boxes then suppress later boxes in one vectorized pass. A block is all
   undecided boxes while their candidate pairs fit a budget (131,072), else a visiting-order
   prefix shrunk to fit, so clusters of near-identical boxes cost about the budget, not N^2.
   Only chains longer than 16 rounds (rows of boxes each overlapping the next) are finished by
   a loop over the block's remaining edges.

Memory is bounded by the pair chunk (65,536 candidate pairs at a time) and the edges found.
Boxes with a NaN or infinite coordinate, or without positive width and height, have IoU 0 or NaN
with every box, so they are kept and never suppress. Thresholds below 0 or NaN go to the
reference. The sweep runs in numpy: its gathers and ``nonzero`` are several times faster than
torch's on the CPU.

``impl="auto"`` uses torchvision's compiled op when it is importable (much faster on CUDA; its
order for exactly tied scores may differ).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from omniseg.ops.nms_reference import batched_nms_reference, nms_reference
from omniseg.ops.roi_align import resolve_impl, torchvision_ops

_BLOCK_PAIRS = 1 << 17  # candidate pairs within a block, above which the block shrinks
_MIN_BLOCK = 64
_PAIR_CHUNK = 1 << 16  # candidate pairs expanded at once (small: fresh memory is slow to fault in)
_ROUNDS = 16  # fixed-point rounds before the sequential finish
_SLACK = 1e-9  # relative slack of the window bounds
_MIN_PRUNE_THRESHOLD = 1e-6  # below: plain overlap windows (the slack argument needs t >> 1e-15)
_MIN_SIDE = 1e-100  # smaller sides: plain overlap windows (products could leave the normal range)


def _check(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms: boxes must be N x 4, got {tuple(boxes.shape)}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"nms: scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if scores.is_floating_point() and bool(torch.isnan(scores).any()):
        raise ValueError("nms: scores contain NaN; filter or fix them before NMS")


class _Boxes:
    """Live boxes (finite, positive width and height) in visiting order, with their window bounds.

    ``k1`` / ``kl`` are sort keys of x1 and of the largest x1 a right-hand partner may have
    (inclusive); ``ly`` / ``rx`` / ``ry`` bound a partner's y1 from above and x2 / y2 from below.
    """

    def __init__(self, b: np.ndarray, group: np.ndarray | None, thr: float):
        x1, y1, x2, y2 = np.ascontiguousarray(b.T)
        w, h = x2 - x1, y2 - y1
        self.x1, self.y1, self.x2, self.y2, self.area = x1, y1, x2, y2, w * h
        frac = 1.0 - thr + thr * _SLACK  # > 0 here: larger thresholds return before
        plain_x = np.nextafter(x2, -np.inf)  # x1_q < x2_p
        self.prune = thr >= _MIN_PRUNE_THRESHOLD
        if self.prune:
            ok = (w >= _MIN_SIDE) & (h >= _MIN_SIDE)
            dw, dh = w * frac, h * frac
            lx = np.where(ok, np.minimum(x1 + dw, plain_x), plain_x)
            # Rounding x + d to nearest is monotone, so these bounds only ever widen.
            self.ly = np.where(ok, y1 + dh, np.inf)
            self.rx = np.where(ok, x2 - dw, -np.inf)
            self.ry = np.where(ok, y2 - dh, -np.inf)
        else:
            lx = plain_x
        if group is None:
            self.k1, self.kl = x1, lx
        else:  # exact integer keys: group-major, then the rank of the value among all x1 and limits
            vals = np.sort(np.concatenate([x1, lx]))
            base = group * (2 * x1.shape[0])
            self.k1 = base + np.searchsorted(vals, x1)
            self.kl = base + np.searchsorted(vals, lx)

    def edges(
        self, left: np.ndarray, right: np.ndarray, start: np.ndarray, end: np.ndarray, thr: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (left[i], right[j]) for j in [start_i, end_i) whose IoU exceeds ``thr``.

        Returns the two box indices of each such pair (left's, right's), chunked in memory.
        """
        count = np.maximum(end - start, 0)
        cum = np.cumsum(count)
        total = int(cum[-1]) if len(cum) else 0
        if total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        bounds = np.unique(np.concatenate([[0, len(left)], np.searchsorted(cum, np.arange(_PAIR_CHUNK, total, _PAIR_CHUNK), "right")]))
        if self.prune:  # the y1 bounds, on positions, before any pair is gathered by box index
            y1_l, ly_l, y1_r, ly_r = self.y1.take(left), self.ly.take(left), self.y1.take(right), self.ly.take(right)
        out_l, out_r = [], []
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            c = count[lo:hi]
            cc = np.cumsum(c)
            ri = np.arange(int(cc[-1])) - np.repeat(cc - c - start[lo:hi], c)  # right position of each pair
            if self.prune:
                sel = np.flatnonzero((y1_r.take(ri) <= np.repeat(ly_l[lo:hi], c))
                                     & (np.repeat(y1_l[lo:hi], c) <= ly_r.take(ri)))
                li, ri = np.searchsorted(cc, sel, "right"), ri.take(sel)
            else:
                li = np.repeat(np.arange(hi - lo), c)
            pl, pr = self._filter(left[lo:hi].take(li), right.take(ri), thr)
            out_l.append(pl)
            out_r.append(pr)
        return np.concatenate(out_l), np.concatenate(out_r)

    def _filter(self, p: np.ndarray, q: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray]:
        if self.prune:
            m = (self.x2.take(q) >= self.rx.take(p)) & (self.x2.take(p) >= self.rx.take(q))
            m &= (self.y2.take(q) >= self.ry.take(p)) & (self.y2.take(p) >= self.ry.take(q))
            sel = np.flatnonzero(m)
            p, q = p.take(sel), q.take(sel)
        # The reference's formula, operation for operation (float64): equal IoUs, equal decisions.
        w = np.minimum(self.x2.take(p), self.x2.take(q)) - np.maximum(self.x1.take(p), self.x1.take(q))
        h = np.minimum(self.y2.take(p), self.y2.take(q)) - np.maximum(self.y1.take(p), self.y1.take(q))
        inter = np.maximum(w, 0) * np.maximum(h, 0)
        union = self.area.take(p) + self.area.take(q) - inter
        sel = np.flatnonzero((union > 0) & (inter / union > thr))
        return p.take(sel), q.take(sel)


def _resolve(alive: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Greedy outcome of boxes in visiting order (``alive``: not yet suppressed) given edges
    src -> dst (src earlier): the fixed-point iteration, then a sequential finish if needed."""
    keep = alive
    for _ in range(_ROUNDS):
        sup = np.zeros_like(alive)
        sup[dst[keep[src]]] = True
        new = alive & ~sup
        if np.array_equal(new, keep):
            return keep
        keep = new
    # Long suppression chains: finish sequentially over the edges (rare; see the module docstring).
    order = np.argsort(src, kind="stable")
    src_s, dst_s = src[order], dst[order]
    heads = np.flatnonzero(np.r_[True, src_s[1:] != src_s[:-1]])
    ends = np.r_[heads[1:], len(src_s)]
    removed = ~alive
    for s, lo, hi in zip(src_s[heads].tolist(), heads.tolist(), ends.tolist()):  # increasing src
        if not removed[s]:
            removed[dst_s[lo:hi]] = True
    return ~removed


def _greedy(b: np.ndarray, group: np.ndarray | None, thr: float) -> np.ndarray:
    """Keep mask of N boxes (N x 4 float64, visiting order; optional N dense group ids)."""
    n = b.shape[0]
    keep = np.ones(n, dtype=bool)
    if not 1.0 - thr + thr * _SLACK > 0:  # threshold >= ~1 + 1e-9: no computed IoU exceeds it
        return keep
    live_idx = np.flatnonzero(np.isfinite(b).all(axis=1) & (b[:, 2] - b[:, 0] > 0) & (b[:, 3] - b[:, 1] > 0))
    m = len(live_idx)
    if m < 2:
        return keep
    lb = _Boxes(b[live_idx], None if group is None else group[live_idx], thr)
    by_key = np.argsort(lb.k1, kind="stable")  # live boxes sorted by (group, x1)
    undecided = np.ones(m, dtype=bool)  # neither kept nor suppressed yet
    kept = np.zeros(m, dtype=bool)
    first = 0  # boxes before `first` (visiting order) are decided
    while first < m:
        rest = by_key[undecided[by_key]]  # undecided boxes by key
        if not len(rest):
            break
        # Block: the next undecided boxes in visiting order, as many as keep its pairs in budget.
        end, blk = m, rest
        pairs = _self_pairs(lb, blk)
        if pairs[2].sum() > _BLOCK_PAIRS:
            ahead = np.flatnonzero(undecided[first:]) + first
            size = len(ahead)
            while pairs[2].sum() > _BLOCK_PAIRS and size > _MIN_BLOCK:
                size = max(_MIN_BLOCK, int(size * 0.9 * (_BLOCK_PAIRS / pairs[2].sum()) ** 0.5))
                end = int(ahead[size]) if size < len(ahead) else m
                blk = rest[rest < end]
                pairs = _self_pairs(lb, blk)
        p, q = lb.edges(blk, blk, *pairs[:2], thr)
        alive = _resolve(undecided[first:end].copy(), np.minimum(p, q) - first, np.maximum(p, q) - first)
        kept[first:end] = alive
        undecided[first:end] = False
        new = blk[alive[blk - first]]  # the block's kept boxes, by key
        rest = rest[rest >= end]
        first = end
        if len(new) and len(rest):
            # They suppress later boxes: new box on the left (x1_new <= x1_r), then the later one.
            k1n, k1r = lb.k1[new], lb.k1[rest]
            _, r1 = lb.edges(new, rest, np.searchsorted(k1r, k1n), np.searchsorted(k1r, lb.kl[new], "right"), thr)
            r2, _ = lb.edges(rest, new, np.searchsorted(k1n, k1r, "right"),
                             np.searchsorted(k1n, lb.kl[rest], "right"), thr)
            undecided[r1] = False
            undecided[r2] = False
    keep[live_idx] = kept
    return keep


def _self_pairs(lb: _Boxes, blk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window [start, end) of each box of ``blk`` (sorted by key) among the later ones, and its size."""
    start = np.arange(1, len(blk) + 1)
    end = np.searchsorted(lb.k1[blk], lb.kl[blk], "right")
    return start, end, np.maximum(end - start, 0)


def _nms_torch(boxes: Tensor, scores: Tensor, iou_threshold: float, class_ids: Tensor | None = None) -> Tensor:
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    thr = float(iou_threshold)
    if not thr >= 0:  # negative or NaN: degenerate thresholds, served by the reference
        if class_ids is None:
            return nms_reference(boxes, scores, thr)
        return batched_nms_reference(boxes, scores, class_ids, thr)
    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices.numpy()
    b = boxes.detach().cpu().to(torch.float64).numpy()[order]
    group = None
    if class_ids is not None:
        cid = class_ids.detach().cpu().numpy()[order]
        if n > 1 and bool((cid != cid[0]).any()):
            group = np.unique(cid, return_inverse=True)[1].reshape(-1).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # inf - inf, overflow: expected
        keep = _greedy(b, group, thr)
    return torch.from_numpy(order[keep]).to(boxes.device)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, impl: str = "auto") -> Tensor:
    """Greedy NMS.

    Args:
        boxes: N x 4 XYXY.
        scores: N scores (NaN raises ValueError).
        iou_threshold: suppress boxes with IoU > threshold with a kept, higher-ranked box.
        impl: "auto" | "torch" | "torchvision".

    Returns:
        K long indices of kept boxes, by decreasing score (ties: increasing index).
    """
    _check(boxes, scores)
    if resolve_impl(impl) == "torchvision" and boxes.shape[0] > 0:
        tv = torchvision_ops()
        assert tv is not None
        return tv.nms(boxes, scores.to(boxes.dtype), float(iou_threshold))
    return _nms_torch(boxes, scores, iou_threshold)


def batched_nms(
    boxes: Tensor, scores: Tensor, class_ids: Tensor, iou_threshold: float, impl: str = "auto"
) -> Tensor:
    """Class-wise NMS: boxes of different classes never suppress each other.

    All classes are handled in one pass (see the module docstring), with exactly the result of
    one :func:`nms` per class merged by (score desc, index asc).

    Args:
        boxes: N x 4 XYXY.
        scores: N.
        class_ids: N integer class (or image x class) ids.
        iou_threshold: as in :func:`nms`.
        impl: "auto" | "torch" | "torchvision".

    Returns:
        K long indices of kept boxes, by decreasing score (ties: increasing index).
    """
    _check(boxes, scores)
    if class_ids.shape != scores.shape:
        raise ValueError(f"batched_nms: class_ids must have shape {tuple(scores.shape)}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if resolve_impl(impl) == "torchvision":
        tv = torchvision_ops()
        assert tv is not None
        return tv.batched_nms(boxes, scores.to(boxes.dtype), class_ids, float(iou_threshold))
    return _nms_torch(boxes, scores, iou_threshold, class_ids)
