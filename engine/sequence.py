"""Positional label logic: the most probable anatomically consistent label sequence (Viterbi).

The labeller scores each vertebra independently; the spine is a chain. Given the candidates ordered
top to bottom, we decode labels that strictly follow ``engine.labels.CRANIOCAUDAL``:

* consecutive levels by default (T12 then L1, L5 then S - skipping a transitional level is normal);
* a skip of k levels (a missed vertebra) only with a per-level log-prior AND a gap between the two
  centres that is large for those levels: every transition a -> b scores the gap's log-normal
  likelihood around the expected centre distance from a to b, so a gap about twice the usual favours
  "one level missing", and a gap below ``min_skip_ratio`` x the consecutive expectation forbids the
  skip outright;
* transitional T13 (28, between T12 and L1) and L6 (25, between L5 and S) at a low prior, so they are
  used only when the scores support them;
* partial field of view: the sequence may start and end at any level;
* the rib cue (``engine.ribs``): a rib seen touching a candidate, none where one would show, or the
  ilium beside it adds log P(observation | level) to each level's emission
  (``SequenceParams.rib_likelihood``, ``no_rib_likelihood``, ``ilium_likelihood``).

Expected centre distances are population values scaled per patient: a first pass decodes with scale 1,
the scale is re-estimated as the median of observed / expected distances, and a second pass decodes
with it. Confidence per vertebra is the posterior marginal of its chosen label (forward-backward on
the same chain model).

This is tiny host-side work (N <= ~30 candidates x 28 levels); inputs may be CuPy arrays, they are
brought to the host.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from engine.labels import CRANIOCAUDAL, NAMES
from engine.xp import to_numpy

TRANSITIONAL: tuple[int, ...] = (28, 25)  # T13, L6

# Typical adult centre-to-centre distance (mm) from each non-transitional level to the next one
# (C1 -> C2 ... L5 -> S, S -> Co). Rounded from CT morphometry (vertebral body height + disc height);
# only ratios matter much since a per-patient scale is estimated.
DEFAULT_STEP_MM: dict[int, float] = {
    1: 16.0, 2: 20.0, 3: 16.0, 4: 16.0, 5: 16.0, 6: 16.0, 7: 17.0,  # C1..C7 ->
    8: 19.0, 9: 20.0, 10: 21.0, 11: 22.0, 12: 22.0, 13: 23.0, 14: 24.0, 15: 25.0,  # T1..T8 ->
    16: 26.0, 17: 27.0, 18: 29.0, 19: 31.0,  # T9..T12 ->
    20: 33.0, 21: 35.0, 22: 36.0, 23: 36.0, 24: 40.0,  # L1..L5 ->
    26: 50.0,  # S -> Co
}


@dataclass
class SequenceParams:
    """Priors and penalties of the chain model (log-space; nats).

    * ``skip_logprior = -3``: per missed level; a miss is uncommon but must beat a couple of
      confidently wrong scores when the gap says so.
    * ``transitional_logprior = -1.5``: T13 / L6 are rare (~5 %), but the labeller's softmax already
      reflects that from training; this extra prior only asks for a clear margin (a transitional
      score ~4.5x the alternative's) before a T13 / L6 is inserted.
    * ``gap_sigma = 0.2``: spread of log(observed / expected distance) between adjacent centres
      (levels and patients differ by ~10-20 %). Every transition scores -(ln(gap/expected))^2/(2 sigma^2):
      a gap twice the consecutive expectation costs the consecutive reading (ln 2)^2 / 0.08 = 6 nats,
      while the one-level skip reading fits it (~0) and pays ``skip_logprior``.
    * ``gap_penalty_cap = 8``: the most one gap can cost, so one bad centre cannot dominate.
    * ``min_skip_ratio = 1.4``: a skip is impossible when gap < 1.4 x the consecutive expectation
      (a normal gap forbids it) - a missed vertebra leaves ~2x.
    * ``max_skip = 3``: at most 3 missed levels between two detected vertebrae.
    * ``prob_floor = 1e-4``: scores are clipped here, so one confidently wrong row costs at most
      ~9 nats and can be overruled by its neighbours.
    * ``estimate_scale``: refine the patient scale from a first pass (clamped to ``scale_bounds``).
    * ``drop_logprior = -10``: a candidate may also be "not a vertebra of the chain" (a piece of an arch
      segmented apart, a stray the chain check kept) at this cost, at most ``max_drop_run`` in a row.
      Without that choice one such candidate forces every label above it one level up (held-out
      phantom default-100004: a spinous process segmented apart, 33 mm behind the bodies, 7 mm below
      T5, 4 % of its neighbours' volume; in 3-D it sat a normal step from T6). Its centre and scores
      look like a vertebra's, its volume does not: a candidate the field of view does not cut with
      under ``small_ratio`` of the median volume costs only ``small_drop_logprior`` to drop. Others
      must be clearly impossible to keep, at more than one wrong level and one capped gap together.
      ``None`` disables dropping.
    * ``anchors = (26,)``, ``anchor_min_score = 0.5``: levels whose shape is unlike any other's. The
      top-most candidate scoring at least ``anchor_min_score`` for an anchor level takes that level and
      is never dropped; the rest of the chain is decoded around it. The sacrum is the one anchor: the
      labeller reads lumbar levels by size and position cues that shift with the patient and the
      scanner (on the real abdomen CT both trained labellers read L1-L5 one to two levels high), but
      it scores the sacrum 0.8-0.9 on every scan. Without the anchor, that shift outvoted the sacrum's
      own score on the real CT once a second labeller was tried: the sacrum was decoded L5, a recovery
      was proposed below it, and every label of the chain moved up one.
    """

    skip_logprior: float = -3.0
    transitional_logprior: float = -1.5
    gap_sigma: float = 0.2
    gap_penalty_cap: float = 8.0
    min_skip_ratio: float = 1.4
    max_skip: int = 3
    prob_floor: float = 1e-4
    estimate_scale: bool = True
    scale_bounds: tuple[float, float] = (0.6, 1.6)
    drop_logprior: float | None = -10.0
    small_drop_logprior: float = -1.0
    small_ratio: float = 0.25
    max_drop_run: int = 2
    anchors: tuple[int, ...] = (26,)
    anchor_min_score: float = 0.5
    # With ``volumes``: a candidate the field of view cuts anchors only with a mask of at least this share
    # of the median candidate's. A few slices of bone at the scan's face can score like the sacrum: on the
    # real 30-slice abdomen crop, a 5-slice slab below L1 (1 % of the median volume) scored 0.62 with a
    # session-11 labeller, was anchored as the sacrum and moved the three vertebrae above it from T11-L1 to
    # L3-L5. A small mask the field of view does not cut still anchors: the segmenter may draw only part
    # of a real sacrum (3.4 k voxels on the real abdomen CT in session 9).
    anchor_min_volume: float = 0.25
    step_mm: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_STEP_MM))
    # P(observation | level) of the rib cue (engine.ribs.rib_evidence), measured on 48 phantoms' cascade
    # masks (training seeds 0-19, 30-37, 72-91; 472 candidates; evaluation/results/2026-12-01-s15/rib-cue).
    # A rib seen: 0/103 cervical, 3/15 T1 (its short first rib curves away inside the slab), 185/232
    # T2-T11, 16/24 T12, 0/71 L1-L4, 2/12 L5 (an iliac crest), 11/11 sacrum (the ilium; since session 19
    # its own code, ``ilium_likelihood``, and 2/19 sacra still read "rib"). No rib where one would show:
    # 51/103 cervical, 4/15 T1, 0/256 T2-T12, 20/83 lumbar. Rounded towards 0.5 where samples are few
    # and for real anatomy: lumbar and cervical ribs are ~1 % each, and ~5 % of people have 11 rib pairs
    # or a 12th rib too short to show (T12 and T13 "no rib" 0.06; the phantoms draw 11 pairs at 2 %, hard
    # 8 %). "Unknown" carries no likelihood.
    rib_likelihood: dict[int, float] = field(default_factory=lambda: dict(RIB_LIKELIHOOD))
    no_rib_likelihood: dict[int, float] = field(default_factory=lambda: dict(NO_RIB_LIKELIHOOD))
    # P(ilium beside it | level) (engine.ribs.ILIUM). On ground-truth masks of 16 spines (7 held-out, 6
    # validation phantoms, the real abdomen CT; evaluation/results/2026-12-02-s19/ilium-cue): 12/13 whole
    # sacra (the 13th has 69 mm of field of view on one side, under ``RibParams.ilium_room_mm``), 0/96
    # L1-L5, 0/16 T10-T12. Through the cascade (all 85 evaluation cases, ibid.): 15/19 sacra, 0/28 L5-L6,
    # 1/147 L1-L4, 0/167 cervical, 4/477 thoracic, each the lowest vertebra of a scan that ends in the
    # thoracic spine (only the lowest with bone beside it is measured). Dense rib fans fill the rows too:
    # measured on every vertebra, new hard phantom 300028 read it on 9 of T2-T12, and 0.01 there moved 6
    # of them off their level; so thoracic levels keep 0.1. Lumbar and cervical get 0.01, not 0: a real
    # pelvis may differ. The ratio to L5 / L6 must outweigh the labeller: the phantom-trained labellers
    # read the real sacrum as L5 or L6, and the session-18 labeller gives the real abdomen's first sacrum
    # mask P(S) 0.07 against L6 0.54 (S at 0.7 or L5 / L6 at 0.05 leave it "L5").
    ilium_likelihood: dict[int, float] = field(default_factory=lambda: dict(ILIUM_LIKELIHOOD))


# See SequenceParams.rib_likelihood. T13 carries ribs like T12; L6 sits by the iliac crests like L5.
RIB_LIKELIHOOD: dict[int, float] = {
    **{c: 0.01 for c in range(1, 7)}, 7: 0.03, 8: 0.2, **{t: 0.8 for t in range(9, 19)}, 19: 0.65, 28: 0.65,
    **{lv: 0.03 for lv in range(20, 24)}, 24: 0.15, 25: 0.1, 26: 0.15, 27: 0.5,
}
NO_RIB_LIKELIHOOD: dict[int, float] = {
    **{c: 0.5 for c in range(1, 8)}, 8: 0.3, **{t: 0.02 for t in range(9, 19)}, 19: 0.06, 28: 0.06,
    **{lv: 0.25 for lv in range(20, 26)}, 26: 0.02, 27: 0.5,
}
# See SequenceParams.ilium_likelihood (thoracic 0.1: rib fans that fill the window).
ILIUM_LIKELIHOOD: dict[int, float] = {
    **{c: 0.01 for c in range(1, 8)}, **{t: 0.1 for t in range(8, 20)}, 28: 0.1,
    **{lv: 0.01 for lv in range(20, 26)}, 26: 0.8, 27: 0.5,
}


@dataclass
class SequenceResult:
    labels: list[int]  # VerSe IDs, input order (top to bottom), strictly increasing in CRANIOCAUDAL
    confidence: list[float]  # posterior probability of each chosen label
    log_score: float  # joint log-score of the decoded path (emissions + priors + gap terms)
    missed: list[tuple[int, list[int]]]  # (i, levels skipped between candidate i and i + 1)
    scale: float  # patient scale applied to the expected distances
    consistent: bool = True  # False only if no consistent sequence exists (more candidates than levels)
    # Candidates decoded as not a vertebra of the chain (label 0, confidence 0); ``missed`` then counts
    # between a kept candidate and the next kept one.
    dropped: list[int] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [NAMES[lab] for lab in self.labels]


_STATES = np.asarray(CRANIOCAUDAL)
_S = len(_STATES)
_INDEX = {int(s): i for i, s in enumerate(CRANIOCAUDAL)}
_IS_TRANS = np.isin(_STATES, TRANSITIONAL)


def _chain_tables(step_mm: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """(expected distance, skipped levels) between every ordered pair of states (S x S).

    Distance from state a to b (a before b) walks the chain through non-transitional levels; a
    transitional level counts only as an endpoint (T12 -> L1 is one step, as are T12 -> T13 and
    T13 -> L1, each with the T12 -> L1 distance). Entries with b <= a are nan / -1.
    """
    core = [s for s in CRANIOCAUDAL if s not in TRANSITIONAL]
    # Distance from every state to its next core level.
    nxt_core = {}
    for s in CRANIOCAUDAL:
        later = [c for c in core if CRANIOCAUDAL.index(c) > CRANIOCAUDAL.index(s)]
        nxt_core[s] = later[0] if later else None
    pos = {c: i for i, c in enumerate(core)}
    cum = np.concatenate([[0.0], np.cumsum([step_mm.get(c, 25.0) for c in core[:-1]])])
    prev_core = {s: max((c for c in core if CRANIOCAUDAL.index(c) < CRANIOCAUDAL.index(s)),
                        key=CRANIOCAUDAL.index, default=None) for s in CRANIOCAUDAL}

    def z(s: int) -> float:  # coordinate along the chain; transitional sits one step after its predecessor
        if s in TRANSITIONAL:
            p = prev_core[s]
            return float(cum[pos[p]]) + step_mm.get(p, 25.0)
        return float(cum[pos[s]])

    dist = np.full((_S, _S), np.nan)
    skipped = np.full((_S, _S), -1, dtype=np.int64)
    for ia, a in enumerate(CRANIOCAUDAL):
        for ib in range(ia + 1, _S):
            b = CRANIOCAUDAL[ib]
            between = [CRANIOCAUDAL[t] for t in range(ia + 1, ib)]
            skipped[ia, ib] = sum(1 for t in between if t not in TRANSITIONAL)
            if a in TRANSITIONAL:  # T13 -> L1 is a full step; then on along the chain
                d = (z(nxt_core[a]) - z(prev_core[a])) + (z(b) - z(nxt_core[a]))
            else:  # z(T13) = z(T12) + step(T12): entering a transitional level is one full step
                d = z(b) - z(a)
            dist[ia, ib] = d
    return dist, skipped


class _Model:
    def __init__(self, params: SequenceParams):
        self.p = params
        self.dist, self.skipped = _chain_tables(params.step_mm)
        # Distance to the next state in a consecutive (no-skip) step, per source state: the
        # reference for "is this gap large?".
        cons = np.where((self.skipped == 0), self.dist, np.inf)
        cons[_IS_TRANS[None, :] & ~_IS_TRANS[:, None] & (self.skipped == 0)] = np.inf  # prefer core successor
        ref = np.min(cons, axis=1)
        self.ref = np.where(np.isfinite(ref), ref, np.nanmax(self.dist))  # last level: any value
        self.state_prior = np.where(_IS_TRANS, params.transitional_logprior, 0.0)

    def transition(self, gap: float | None, scale: float) -> np.ndarray:
        """log T[a, b] for one step (S x S), b strictly after a."""
        p = self.p
        k = self.skipped
        T = np.full((_S, _S), -np.inf)
        ok = (k >= 0) & (k <= p.max_skip)
        T[ok] = p.skip_logprior * k[ok]
        T = T + self.state_prior[None, :]
        if gap is None or not np.isfinite(gap) or gap <= 0:
            T[k > 0] = -np.inf  # no geometry: no evidence for a miss
            return T
        e1 = self.ref[:, None] * scale
        ek = self.dist * scale
        # Log-normal gap likelihood for every transition, consecutive ones included, so hypotheses in
        # regions of different spacing compare fairly (a skip in the neck must not "explain" a normal
        # lumbar gap for free). Capped: one odd gap (a false positive, a bad centre) costs a bounded amount.
        with np.errstate(invalid="ignore", divide="ignore"):
            ll = -(np.log(gap / ek)) ** 2 / (2.0 * p.gap_sigma ** 2)
        ll = np.maximum(ll, -p.gap_penalty_cap)
        T[ok] += ll[ok]
        skip = ok & (k > 0)
        too_small = np.broadcast_to(gap < p.min_skip_ratio * e1, T.shape)
        T[skip & too_small] = -np.inf  # a normal gap forbids a skip
        return T


def _emissions(scores: np.ndarray, classes: list[int], floor: float) -> np.ndarray:
    """log p(level | vertebra), (N, S). Columns for IDs outside the chain (e.g. background 0) are
    dropped and rows renormalised; levels the labeller has no column for get the floor."""
    col = {int(c): i for i, c in enumerate(classes)}
    unknown = [c for c in col if c not in CRANIOCAUDAL and c != 0]
    if unknown:
        raise ValueError(f"classes contains IDs that are not VerSe vertebra labels: {unknown}")
    P = np.full((scores.shape[0], _S), 0.0)
    for si, s in enumerate(CRANIOCAUDAL):
        if s in col:
            P[:, si] = scores[:, col[s]]
    tot = P.sum(axis=1, keepdims=True)
    P = np.where(tot > 0, P / np.where(tot > 0, tot, 1.0), 1.0 / _S)
    present = np.isin(_STATES, list(col))
    P[:, ~present] = floor
    return np.log(np.clip(P, floor, 1.0))


_NEVER = -1e6  # log-cost of a choice that must not be taken (finite, unlike -inf, so sums stay defined)


def _anchor(E: np.ndarray, S: np.ndarray, classes: list[int], part: np.ndarray, p: "SequenceParams") -> np.ndarray:
    """In place: the top-most candidate not in ``part`` (end pieces, slabs cut by the field of view) scoring
    >= ``anchor_min_score`` for an anchor level may take only that level (see ``SequenceParams.anchors``).
    Returns the anchored candidates (bool, (N,))."""
    anchored = np.zeros(E.shape[0], dtype=bool)
    for level in p.anchors:
        if level not in classes:
            continue
        hit = np.flatnonzero((S[:, classes.index(level)] >= p.anchor_min_score) & ~part & ~anchored)
        if hit.size:
            t = int(hit[0])
            keep = E[t, _INDEX[level]]
            E[t] = _NEVER
            E[t, _INDEX[level]] = keep
            anchored[t] = True
    return anchored


def _viterbi(E: np.ndarray, Ts: list[np.ndarray], prior: np.ndarray):
    n = E.shape[0]
    delta = prior + E[0]
    back = np.zeros((n, _S), dtype=np.int64)
    for t in range(1, n):
        cand = delta[:, None] + Ts[t - 1]
        back[t] = np.argmax(cand, axis=0)
        delta = cand[back[t], np.arange(_S)] + E[t]
    path = np.zeros(n, dtype=np.int64)
    path[-1] = int(np.argmax(delta))
    best = float(delta[path[-1]])
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path, best


def _viterbi_dropping(E: np.ndarray, C: np.ndarray, part: np.ndarray, model: "_Model", scale: float,
                      prior: np.ndarray, drop: np.ndarray, max_run: int) -> tuple[np.ndarray, float]:
    """Best path when any candidate may be dropped (log-cost ``drop[t]``, at most ``max_run`` in a row):
    (kept mask, score). Gaps run between consecutive KEPT candidates, so the state of a kept candidate
    remembers which one came before: a semi-Markov Viterbi over (candidate, level), O(N max_run S^2)."""
    n = E.shape[0]
    best = np.full((n, _S), -np.inf)
    prev = np.full((n, _S), -1, dtype=np.int64)  # previous kept candidate (-1: none before)
    prev_s = np.zeros((n, _S), dtype=np.int64)
    cols = np.arange(_S)
    cum = np.concatenate([[0.0], np.cumsum(drop)])  # cum[b] - cum[a]: dropping candidates a .. b-1
    for t in range(n):
        if t <= max_run:
            best[t] = prior + E[t] + cum[t]
        for tp in range(max(0, t - 1 - max_run), t):
            gap = np.nan if part[tp] or part[t] else float(np.linalg.norm(C[t] - C[tp]))
            cand = best[tp][:, None] + model.transition(gap, scale)
            a = np.argmax(cand, axis=0)
            v = cand[a, cols] + E[t] + (cum[t] - cum[tp + 1])
            up = v > best[t]
            best[t][up], prev[t][up], prev_s[t][up] = v[up], tp, a[up]
    tail = np.arange(n) >= n - 1 - max_run
    total = np.where(tail[:, None], best + (cum[n] - cum[1:])[:, None], -np.inf)
    t, st = np.unravel_index(int(np.argmax(total)), total.shape)
    score = float(total[t, st])
    kept = np.zeros(n, dtype=bool)
    while t >= 0 and np.isfinite(score):
        kept[t] = True
        t, st = int(prev[t, st]), int(prev_s[t, st])
    return kept, score


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def _posteriors(E: np.ndarray, Ts: list[np.ndarray], prior: np.ndarray) -> np.ndarray:
    n = E.shape[0]
    fwd = np.zeros((n, _S))
    bwd = np.zeros((n, _S))
    fwd[0] = prior + E[0]
    for t in range(1, n):
        fwd[t] = _logsumexp(fwd[t - 1][:, None] + Ts[t - 1], axis=0) + E[t]
    for t in range(n - 2, -1, -1):
        bwd[t] = _logsumexp(Ts[t] + (E[t + 1] + bwd[t + 1])[None, :], axis=1)
    post = fwd + bwd
    z = _logsumexp(post, axis=1)[:, None]
    with np.errstate(invalid="ignore"):
        return np.exp(post - z)


def decode_sequence(scores, classes, centers_mm, params: SequenceParams | None = None,
                    logits: bool = False, partial=None, volumes=None, cut=None, ribs=None) -> SequenceResult:
    """Most probable consistent labels for vertebra candidates ordered top to bottom.

    scores: (N, C) labeller output per candidate, probabilities (or ``logits=True`` for raw logits,
    softmaxed here); classes: the C VerSe IDs of the columns (0 = background is allowed and ignored);
    centers_mm: (N, 3) centres in any millimetre frame (only distances between consecutive
    candidates are used). Returns labels and confidences in the input order.

    partial: (N,) bool, candidates that are only the part of a vertebra inside the field of view (at
    either end of the chain). Neither their scores nor their centres say which level they are (a
    labeller sees a fragment; a fragment's centroid is not the vertebra's centre), so they carry no
    emission and no gap evidence: they take the level next to their neighbour.

    volumes: (N,) mask volumes (any unit); a small one is cheap to drop (see
    ``SequenceParams.drop_logprior``) unless ``cut`` (N,) bool says the field of view cuts it (when
    ``cut`` is not given, the first and last are taken as cut). Dropped candidates get label 0 and are
    listed in ``dropped``.

    ribs: (N,) int, the rib cue (``engine.ribs.rib_evidence``): 1, a rib seen touching the candidate,
    adds log ``params.rib_likelihood`` to its emissions; 0, no rib where one would show, adds log
    ``params.no_rib_likelihood``; 2, the ilium beside it, adds log ``params.ilium_likelihood``; -1
    (unknown) adds nothing.
    """
    p = params or SequenceParams()
    S = np.asarray(to_numpy(scores), dtype=np.float64)
    C = np.asarray(to_numpy(centers_mm), dtype=np.float64)
    classes = [int(c) for c in classes]
    if S.ndim != 2 or S.shape[1] != len(classes):
        raise ValueError(f"scores must be (N, {len(classes)}), got {S.shape}")
    n = S.shape[0]
    if C.shape != (n, 3):
        raise ValueError(f"centers_mm must be ({n}, 3), got {C.shape}")
    if not (np.all(np.isfinite(S)) and np.all(np.isfinite(C))):
        raise ValueError("scores and centres must be finite")
    if n == 0:
        return SequenceResult([], [], 0.0, [], 1.0)
    if logits:
        S = np.exp(S - S.max(axis=1, keepdims=True))
        S /= S.sum(axis=1, keepdims=True)
    elif np.any(S < 0):
        raise ValueError("probability scores must be >= 0 (pass logits=True for raw logits)")
    E = _emissions(S, classes, p.prob_floor)
    part = np.zeros(n, dtype=bool) if partial is None else np.asarray(to_numpy(partial), dtype=bool).reshape(-1)
    if part.shape != (n,):
        raise ValueError(f"partial must be ({n},), got {part.shape}")
    E[part] = 0.0
    if ribs is not None:
        rb = np.asarray(to_numpy(ribs)).reshape(-1).astype(np.int64)
        if rb.shape != (n,) or not np.isin(rb, (-1, 0, 1, 2)).all():
            raise ValueError(f"ribs must be ({n},) codes -1 / 0 / 1 / 2, got shape {rb.shape}")
        for code, table in ((1, p.rib_likelihood), (0, p.no_rib_likelihood), (2, p.ilium_likelihood)):
            like = np.log(np.clip([table.get(int(st), 0.5) for st in _STATES], 1e-6, 1.0))
            E[rb == code] += like[None, :]
    v = None if volumes is None else np.asarray(to_numpy(volumes), dtype=np.float64).reshape(-1)
    if v is not None and v.shape != (n,):
        raise ValueError(f"volumes must be ({n},), got {v.shape}")
    # Cut by the field of view; not known: the chain's ends may be.
    faced = (np.asarray(to_numpy(cut), dtype=bool).reshape(-1) if cut is not None
             else np.isin(np.arange(n), [0, n - 1]))
    slab = np.zeros(n, dtype=bool) if v is None else faced & (v < p.anchor_min_volume * np.median(v))
    anchored = _anchor(E, S, classes, part | slab, p)
    if n > _S:  # more candidates than levels: no strictly ordered labelling exists
        idx = np.argmax(E, axis=1)
        return SequenceResult([int(_STATES[i]) for i in idx], [float(np.exp(E[t, i])) for t, i in enumerate(idx)],
                              float(E[np.arange(n), idx].sum()), [], 1.0, consistent=False)
    model = _Model(p)
    gaps = np.linalg.norm(np.diff(C, axis=0), axis=1)
    gaps[part[:-1] | part[1:]] = np.nan  # no geometry: transition() then allows no skip there
    prior = model.state_prior.copy()

    def run(scale: float):
        Ts = [model.transition(float(g), scale) for g in gaps]
        path, best = _viterbi(E, Ts, prior)
        return Ts, path, best

    scale = 1.0
    Ts, path, best = run(scale)
    if p.estimate_scale and n >= 3 and np.isfinite(best):
        ratios = gaps / model.dist[path[:-1], path[1:]]
        ratios = ratios[np.isfinite(ratios)]
        est = float(np.clip(np.median(ratios), *p.scale_bounds)) if ratios.size else 1.0
        if abs(est - 1.0) > 0.02:
            scale = est
            Ts, path, best = run(scale)
    if not np.isfinite(best):  # cannot happen for n <= S with max_skip >= 0, but stay total
        idx = np.argmax(E, axis=1)
        return SequenceResult([int(_STATES[i]) for i in idx], [float(np.exp(E[t, i])) for t, i in enumerate(idx)],
                              float(E[np.arange(n), idx].sum()), [], scale, consistent=False)
    if p.drop_logprior is not None and n >= 3:
        drop = np.full(n, float(p.drop_logprior))
        if v is not None:  # a vertebra cut by the field of view is small for a reason
            drop[(v < p.small_ratio * np.median(v)) & ~part & ~faced] = float(p.small_drop_logprior)
        drop[anchored] = _NEVER  # finite: the dropping Viterbi takes differences of cumulative costs
        kept, score = _viterbi_dropping(E, C, part, model, scale, prior, drop, int(p.max_drop_run))
        if not kept.all() and kept.sum() >= 2 and score > best + 1e-9:
            sub = decode_sequence(S[kept], classes, C[kept], replace(p, drop_logprior=None), partial=part[kept],
                                  volumes=None if v is None else v[kept], cut=faced[kept],
                                  ribs=None if ribs is None else rb[kept])
            idx = np.flatnonzero(kept)
            labels, conf = np.zeros(n, dtype=np.int64), np.zeros(n)
            labels[idx], conf[idx] = sub.labels, sub.confidence
            return SequenceResult([int(x) for x in labels], [float(x) for x in conf], sub.log_score,
                                  [(int(idx[t]), lv) for t, lv in sub.missed], sub.scale, sub.consistent,
                                  dropped=[int(i) for i in np.flatnonzero(~kept)])
    post = _posteriors(E, Ts, prior)
    labels = [int(_STATES[s]) for s in path]
    conf = [float(post[t, s]) for t, s in enumerate(path)]
    missed = []
    for t in range(n - 1):
        a, b = path[t], path[t + 1]
        between = [int(x) for x in _STATES[a + 1:b] if x not in TRANSITIONAL]
        if between:
            missed.append((t, between))
    return SequenceResult(labels, conf, best, missed, scale)
