"""Localized-Narratives-style records: word timings and a mouse trace that follows the speech.

Real narratives (ALP paper, section 3.1) pair each spoken word with a time interval and
record the mouse over "matching image regions"; boxes derived from the trace points in a
phrase's time window are *imprecise*: they often do not fully enclose the object (Fig. 2).
We reproduce that: while a phrase about an object is spoken, the mouse scribbles over a
random *part* of the object's visible area (partial coverage), with jitter, occasional
overshoot beyond the object, and a short lead/lag around the phrase; between phrases it
travels to the next target. Stuff words ("the grass") get time over their region too.

Trace points use the public LN convention: x, y normalized by image width/height (may lie
slightly outside [0, 1]), t in seconds, sampled every 0.02-0.05 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omniseg.data.records import Narrative, TracePoint, Utterance
from omniseg.data.synth.language import Word, script_caption


@dataclass
class Mention:
    """Ground truth link between a narrative phrase and its target (for tests / curation checks).

    Attributes:
        target: ("thing", instance index) or ("stuff", stuff name).
        phrase: the words of the phrase joined by spaces.
        start_time, end_time: union of the phrase's utterance intervals (seconds).
    """

    target: tuple[str, int | str]
    phrase: str
    start_time: float
    end_time: float


def _word_times(rng: np.random.Generator, script: list[Word]) -> list[tuple[float, float]]:
    t = float(rng.uniform(0.3, 1.0))
    out = []
    for w in script:
        dur = (0.12 + 0.055 * len(w.text)) * float(rng.uniform(0.8, 1.25))
        out.append((t, t + dur))
        t += dur + float(rng.uniform(0.0, 0.08))
        if w.sentence_end:
            t += float(rng.uniform(0.3, 0.8))
    return out


def _utterances(rng: np.random.Generator, script: list[Word], times: list[tuple[float, float]]) -> list[Utterance]:
    """Words as utterances; untargeted neighbours are sometimes grouped ("In this")."""
    out: list[Utterance] = []
    i = 0
    while i < len(script):
        j = i + 1
        if (
            script[i].target is None
            and not script[i].sentence_end
            and j < len(script)
            and script[j].target is None
            and rng.random() < 0.25
        ):
            j += 1
        out.append(Utterance(" ".join(w.text for w in script[i:j]), times[i][0], times[j - 1][1]))
        i = j
    return out


def mentions_of(script: list[Word], times: list[tuple[float, float]]) -> list[Mention]:
    """Maximal runs of consecutive words sharing a target."""
    out: list[Mention] = []
    i = 0
    while i < len(script):
        tgt = script[i].target
        j = i + 1
        while j < len(script) and script[j].target == tgt and not script[j - 1].sentence_end:
            j += 1
        if tgt is not None:
            out.append(Mention(tgt, " ".join(w.text for w in script[i:j]), times[i][0], times[j - 1][1]))
        i = j
    return out


def _region_points(region: np.ndarray) -> np.ndarray:
    """P x 2 (x, y) pixel centers of a boolean region."""
    ys, xs = np.nonzero(region)
    return np.stack([xs + 0.5, ys + 0.5], axis=1).astype(np.float64)


def _scribble_points(
    rng: np.random.Generator, pts: np.ndarray, count: int, part: tuple[float, float] = (0.4, 1.6)
) -> np.ndarray:
    """``count`` x 2 (x, y) points on a random part of the region with pixel centers ``pts``.

    The part is the region within ``U(part) * extent`` of a random anchor pixel (partial
    coverage: small fractions scribble over a patch, large ones over everything).
    """
    if len(pts) > 4096:  # large stuff regions: a random subset is plenty
        pts = pts[rng.integers(len(pts), size=4096)]
    if len(pts) > 8:
        anchor = pts[int(rng.integers(len(pts)))]
        extent = np.ptp(pts, axis=0).max() + 1.0
        near = np.linalg.norm(pts - anchor, axis=1) <= float(rng.uniform(*part)) * extent
        pts = pts[near]
    chosen = pts[rng.integers(len(pts), size=count)]
    if count > 1 and rng.random() < 0.35:  # overshoot one point beyond the object
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        c = (lo + hi) / 2
        k = int(rng.integers(count))
        chosen[k] = c + (chosen[k] - c) * float(rng.uniform(1.1, 1.5)) + rng.normal(0, 2.0, 2)
    return chosen


def make_narrative(
    rng: np.random.Generator,
    script: list[Word],
    regions: dict[tuple[str, int | str], np.ndarray],
    width: int,
    height: int,
) -> tuple[Narrative, list[Mention]]:
    """Time the script and synthesize the mouse trace.

    Args:
        script: words (see :func:`omniseg.data.synth.language.narrative_script`).
        regions: target -> H x W bool visible region (every target in the script).
        width, height: image size (for normalizing trace coordinates).

    Returns:
        the Narrative and the ground-truth mentions (phrase -> target, time window).
    """
    times = _word_times(rng, script)
    mentions = mentions_of(script, times)
    # keyframes (t, x, y) in pixels
    coords: dict[tuple[str, int | str], np.ndarray] = {}
    keys: list[tuple[float, float, float]] = [(0.0, float(rng.uniform(0, width)), float(rng.uniform(0, height)))]
    for m in mentions:
        lead, lag = float(rng.uniform(0.15, 0.6)), float(rng.uniform(0.05, 0.4))
        t0, t1 = m.start_time - lead, m.end_time + lag
        t0 = max(t0, keys[-1][0] + 0.05)
        n = max(2, int(np.ceil((t1 - t0) / float(rng.uniform(0.06, 0.15)))) + 1)
        if m.target not in coords:
            coords[m.target] = _region_points(regions[m.target])
        # things: anything from a patch to the whole object; stuff: a sweep over part of the region
        part = (0.4, 1.6) if m.target[0] == "thing" else (0.15, 0.4)
        pts = _scribble_points(rng, coords[m.target], n, part)
        for tk, (x, y) in zip(np.linspace(t0, t1, n), pts):
            keys.append((float(tk), float(x), float(y)))
    t_end = times[-1][1] + float(rng.uniform(0.1, 0.5))
    keys.append((max(t_end, keys[-1][0] + 0.05), float(rng.uniform(0, width)), float(rng.uniform(0, height))))
    kt = np.array([k[0] for k in keys])
    kx = np.array([k[1] for k in keys])
    ky = np.array([k[2] for k in keys])
    ts = [0.0]
    while ts[-1] < kt[-1]:
        ts.append(ts[-1] + float(rng.uniform(0.02, 0.05)))
    t = np.asarray(ts)
    x = np.interp(t, kt, kx) + rng.normal(0, 1.2, len(t))
    y = np.interp(t, kt, ky) + rng.normal(0, 1.2, len(t))
    xn = np.clip(x / width, -0.05, 1.05)
    yn = np.clip(y / height, -0.05, 1.05)
    points = [TracePoint(round(float(a), 4), round(float(b), 4), round(float(c), 3)) for a, b, c in zip(xn, yn, t)]
    # split into 1-2 segments at a sentence boundary (the mouse leaves the image briefly)
    segments = [points]
    ends = [times[i][1] for i, w in enumerate(script[:-1]) if w.sentence_end]
    if ends and rng.random() < 0.3:
        cut_t = ends[int(rng.integers(len(ends)))]
        a = [p for p in points if p.t < cut_t]
        b = [p for p in points if p.t > cut_t + 0.1]
        if a and b:
            segments = [a, b]
    narrative = Narrative(
        caption=script_caption(script),
        timed_caption=[
            Utterance(u.utterance, round(u.start_time, 3), round(u.end_time, 3)) for u in _utterances(rng, script, times)
        ],
        traces=segments,
        annotator_id=int(rng.integers(100)),
        dataset_id="synth",
    )
    return narrative, mentions
