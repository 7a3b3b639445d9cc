"""The Cascade: CT -> canonical frame -> detect -> cluster -> segment -> label -> SpineResult (seed 000).

    with Cascade(backend="auto", precision="fp32") as cascade:
        result = cascade.run("case_ct.nii.gz")          # or a Volume, or a DICOM series folder

Sessions are loaded once per Cascade and reused for every CT. Each stage runs on the array module of
the canonical volume (numpy; CuPy when ``array_module="cupy"``), so the same code serves CPU and GPU.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from engine import labels as L
from engine.chain import (ChainParams, above, close_pairs, end_centres, is_split, join_halves, missed_centres,
                          is_sacral_piece, near_level_p, off_chain, one_level_down, own_parts_beyond_ends,
                          same_vertebra_beyond_ends, shares_bone)
from engine.cluster import ClusterParams, cluster_boxes
from engine.detect import DetectParams, detect, select_slices
from engine.errors import InputError, ModelError
from engine.fragments import border_fragments
from engine.localise import CentreOffset, apply_offset
from engine.models import MODEL_NAMES, ModelSpec, load_manifest, run_precision
from engine.preprocess import Canonical, box_at_face, check_volume, masks_to_input, to_canonical
from engine.ribs import RIBS, RibParams, rib_evidence
from engine.segment import (SegmentParams, discard, extend, interface, keep_face_pieces, mask_threshold, merge,
                            regrow, segment)
from engine.types import SpineResult, Vertebra, Volume
from engine.xp import to_numpy

# "recover" segments and labels the vertebrae the chain logic finds after labelling (engine.chain), and
# segments the sacrum again from its mask's centroid (engine.segment.regrow).
STAGES = ("load", "preprocess", "detect", "cluster", "segment", "label", "recover", "postprocess")
Progress = Callable[..., None]  # progress(stage, "started" | "finished", **info)


@dataclass
class CascadeConfig:
    """Everything that changes what or how the cascade runs. Defaults are the shipped behaviour."""

    backend: str = "auto"
    precision: str = "fp32"
    models_dir: str | None = None  # default: the shipped spinert/models
    detect: DetectParams = field(default_factory=DetectParams)
    cluster: ClusterParams = field(default_factory=ClusterParams)
    segment: SegmentParams = field(default_factory=SegmentParams)
    chain: ChainParams = field(default_factory=ChainParams)  # stray candidates, recovery of missed levels
    ribs: RibParams = field(default_factory=RibParams)  # the rib cue the decoder weighs (engine.ribs)
    max_batch: dict[str, int] = field(default_factory=lambda: {"detector": 16, "segmenter": 2, "labeller": 16})
    threads: int | None = None  # CPU intra-op threads (None: the runtime's default)
    verify_models: bool = True  # sha256 of each model file against the manifest
    rebuild: bool = False  # TensorRT backends: rebuild a missing or stale engine instead of refusing it
    array_module: str = "numpy"  # "numpy" or "cupy" (pre/post-processing on the GPU)
    # Move each mask centroid by the segmenter's fitted centre offset (engine.localise), when its
    # manifest entry has one; off to measure the raw centroids (spinert calibrate-centres does).
    centre_offset: bool = True
    # Input limits. Thick slices are refused: at > 3 mm the segmenter (trained on 1 mm voxels) sees
    # interpolated endplates and centres are quantised to +-1.5 mm along the spine, which is the size of
    # the whole localisation budget (2 mm MLE). Raise it knowingly to accept them (a warning is added).
    max_spacing_mm: float = 3.0
    max_voxels: int = 512 * 1024 * 1024  # input voxels (a 512x512x2048 CT)
    max_canonical_voxels: int = 768 * 1024 * 1024  # after isotropic resampling (float32: 3 GB)

    def with_overrides(self, **kw: Any) -> "CascadeConfig":
        """A copy with ``kw`` applied; keys are CascadeConfig fields or stage-parameter fields (None: unchanged)."""
        top: dict[str, Any] = {}
        sub = {"detect": {}, "cluster": {}, "segment": {}, "chain": {}, "ribs": {}}
        own = {f.name for f in fields(self)}
        for k, v in kw.items():
            if v is None:
                continue
            if k in own:
                top[k] = v
                continue
            for part in sub:
                if k in {f.name for f in fields(getattr(self, part))}:
                    sub[part][k] = v
                    break
            else:
                raise TypeError(f"unknown cascade option {k!r}")
        for part, vals in sub.items():
            if vals:
                top[part] = replace(top.get(part, getattr(self, part)), **vals)
        return replace(self, **top)


class _Clock:
    """Per-stage wall times (ms) and progress events."""

    def __init__(self, progress: Progress | None) -> None:
        self.ms: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.progress:
            self.progress(name, "started")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            ms = (time.perf_counter() - t0) * 1e3
            self.ms[name] = self.ms.get(name, 0.0) + ms
            if self.progress:
                self.progress(name, "finished", ms=ms)


def _xp(name: str):
    if name == "numpy":
        return np
    if name == "cupy":
        try:
            import cupy
        except ImportError:
            from engine.errors import BackendError

            raise BackendError("array_module 'cupy' needs CuPy (pip install spinert[gpu])") from None
        return cupy
    raise ValueError(f"unknown array module {name!r}")


def check_header(path: str | os.PathLike, cfg: CascadeConfig) -> None:
    """Refuse a huge file from its header alone, before its voxels are read (single files only)."""
    import SimpleITK as sitk

    p = Path(path)
    if not p.is_file():
        return
    r = sitk.ImageFileReader()
    r.SetFileName(str(p))
    try:
        r.ReadImageInformation()
    except RuntimeError:
        return  # read_volume reports unreadable files with its own clear message
    size = r.GetSize()
    n = int(np.prod(size, dtype=np.int64))
    if len(size) == 3 and n > cfg.max_voxels:
        raise InputError(f"{p}: volume too large ({'x'.join(map(str, size))} = {n / 1e6:.0f} M voxels "
                         f"> {cfg.max_voxels / 1e6:.0f} M); crop it to the spine")


class Cascade:
    """The whole cascade with its three sessions loaded once.

    Cascade(backend="auto", precision="fp32", models_dir=None, config=None, **overrides)
        overrides: any CascadeConfig field or DetectParams/ClusterParams/SegmentParams field
        (e.g. all_slices=True, stride=2, largest_component=False, max_batch={"segmenter": 1}).
    run(source, progress=None, name=None) -> SpineResult
        source: a path (NIfTI/NRRD/MHA file or DICOM series folder) or an engine.types.Volume.
    """

    def __init__(self, backend: str | None = None, precision: str | None = None, models_dir: str | None = None,
                 config: CascadeConfig | None = None, **overrides: Any) -> None:
        cfg = config or CascadeConfig()
        mb = overrides.pop("max_batch", None)
        if mb is not None:
            overrides["max_batch"] = {**cfg.max_batch, **(mb if isinstance(mb, dict) else
                                                           {k: int(mb) for k in cfg.max_batch})}
        self.config = cfg.with_overrides(backend=backend, precision=precision, models_dir=models_dir, **overrides)
        self.specs: dict[str, ModelSpec] = load_manifest(self.config.models_dir)
        missing = [m for m in MODEL_NAMES if m not in self.specs]
        if missing:
            raise ModelError(f"model manifest lacks {', '.join(missing)}")
        sp = {m: float(self.specs[m].preprocess.get("spacing_mm", 1.0)) for m in MODEL_NAMES}
        if len(set(sp.values())) != 1:
            raise ModelError(f"models disagree on the canonical spacing: {sp}")
        self.spacing = sp["detector"]
        self.classes = np.asarray([int(c) for c in self.specs["labeller"].classes], dtype=np.int64)
        bad = [int(c) for c in self.classes if int(c) not in L.NAMES]
        if bad:
            raise ModelError(f"labeller classes {bad} are not VerSe vertebra IDs")
        self.xp = _xp(self.config.array_module)
        from engine.backends import load_session

        self.sessions = {}
        self.model_precisions = {m: run_precision(self.specs[m], self.config.precision) for m in MODEL_NAMES}
        try:
            for m in MODEL_NAMES:
                self.sessions[m] = load_session(self.specs[m], self.config.backend, self.model_precisions[m],
                                                max_batch=self.config.max_batch.get(m), threads=self.config.threads,
                                                verify=self.config.verify_models, rebuild=self.config.rebuild)
        except Exception:
            self.close()
            raise
        self.backend = self.sessions["detector"].backend
        self.centre_offset, self.offset_note = self._centre_offset()
        self.precision = self.config.precision
        self.device = self.sessions["detector"].device

    def _centre_offset(self) -> tuple[CentreOffset | None, str]:
        """The segmenter's fitted centre offset (None if off or absent) and why one was not applied."""
        spec = self.specs["segmenter"]
        off = CentreOffset.from_manifest(spec.raw) if self.config.centre_offset else None
        if off is not None and off.segmenter_sha256 and off.segmenter_sha256 != spec.sha256.get("fp32"):
            return None, ("the segmenter's centre offset was fitted on another segmenter file: centres are raw "
                          "mask centroids (refit with spinert calibrate-centres)")
        return off, ""

    # ---------------------------------------------------------------------------------------------- API
    def __enter__(self) -> "Cascade":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for s in getattr(self, "sessions", {}).values():
            s.close()
        self.sessions = {}

    @property
    def trained(self) -> bool:
        return all(self.specs[m].is_trained for m in MODEL_NAMES)

    @property
    def centre_offset_mm(self) -> dict[str, float] | None:
        """The centre offsets applied (mm per region), None for plain mask centroids."""
        return dict(self.centre_offset.mm) if self.centre_offset else None

    def model_versions(self) -> dict[str, str]:
        return {m: f"{s.version or '?'}{'' if s.is_trained else ' (untrained)'} "
                   f"sha256:{s.sha256.get(self.model_precisions[m], '')[:12]}"
                for m, s in self.specs.items() if m in MODEL_NAMES}

    def models_info(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "device": self.device,
                "centre_offset_mm": self.centre_offset_mm,
                "models": {m: {"version": self.specs[m].version, "trained": self.specs[m].is_trained,
                               "precision": self.model_precisions[m],
                               "sha256": self.specs[m].sha256.get(self.model_precisions[m], ""),
                               "session": self.sessions[m].describe()} for m in self.sessions}}

    def run(self, source: Volume | str | os.PathLike, progress: Progress | None = None,
            name: str | None = None) -> SpineResult:
        """The cascade on one CT. Bad input -> InputError; no spine -> empty result with a warning."""
        clock = _Clock(progress)
        if isinstance(source, Volume):
            vol = source
            clock.ms["load"] = 0.0
        else:
            with clock.stage("load"):
                from engine.io import read_volume

                check_header(source, self.config)
                vol = read_volume(source, name=name)
        if name and vol.name != name:
            vol = replace(vol, name=name)  # a shallow copy: never rename the caller's Volume
        return self._run_volume(vol, clock)

    __call__ = run

    # -------------------------------------------------------------------------------------- the stages
    def _run_volume(self, vol: Volume, clock: _Clock) -> SpineResult:
        cfg, xp, sp = self.config, self.xp, self.spacing
        warnings: list[str] = []
        with clock.stage("preprocess"):
            check_volume(vol, max_voxels=cfg.max_voxels, max_spacing_mm=cfg.max_spacing_mm)
            if max(vol.spacing) > 3.0:
                warnings.append(f"thick slices ({max(vol.spacing):.1f} mm): centres and masks are less accurate")
            ext = np.asarray(vol.size, dtype=np.float64) * np.asarray(vol.spacing, dtype=np.float64)
            n_iso = float(np.prod(np.maximum(1, np.round(ext / sp))))
            if n_iso > cfg.max_canonical_voxels:
                raise InputError(f"{vol.name}: volume too large after resampling to {sp} mm "
                                 f"({n_iso / 1e6:.0f} M voxels > {cfg.max_canonical_voxels / 1e6:.0f} M)")
            canon = to_canonical(vol, sp)
            iso = xp.asarray(canon.array)
        result = SpineResult(volume_id=vol.name, geometry=vol.geometry(), vertebrae=[], warnings=warnings,
                             timings_ms=clock.ms, backend=self.backend, precision=self.precision,
                             models=self.model_versions())
        if self.offset_note:
            warnings.append(self.offset_note)
        lower = [m for m, p in self.model_precisions.items() if p != self.precision]
        if lower:
            warnings.append(f"{', '.join(lower)} ran at {self.model_precisions[lower[0]]}: no {self.precision} file "
                            f"(spinert calibrate's accuracy guard refused it)")
        # Which centres the robot gets: raw mask centroids (None) or moved by these mm (engine.localise).
        result.info["centre_offset_mm"] = self.centre_offset_mm
        if not self.trained:
            warnings.append("models are untrained placeholders (manifest \"trained\": false): outputs are not meaningful")
        if self.precision == "int8" and self.backend == "onnxruntime":
            warnings.append("INT8 Q/DQ on ONNX Runtime is for checking accuracy, not for speed: on the CPU it ran "
                            "4x slower than fp32 (bench/results/cpu-2026-11-30-s3); TensorRT runs it fast")

        with clock.stage("detect"):
            band, boxes = self._detect(iso)
        result.info["band"] = {"mode": band.mode, "lo": band.lo, "hi": band.hi, "slices": int(band.slices.size),
                               "stride": int(cfg.detect.stride)}
        result.info["boxes"] = len(boxes)
        with clock.stage("cluster"):
            cands = cluster_boxes(boxes, self.cluster_params(band))
            mm = join_halves(np.stack([c.center_mm for c in cands]), cfg.chain) if cands else np.zeros((0, 3))
            stray = off_chain(mm, cfg.chain)
        if not cands:
            why = "no bone found" if band.slices.size == 0 else (
                "the detector found no vertebra" if len(boxes) == 0 else "detections did not form vertebra clusters")
            warnings.append(f"no spine found ({why})")
            return self._finish(result, clock)
        centers = mm[~stray] / sp  # canonical (k, j, i) indices
        result.info["candidates"] = len(cands)
        result.info["halves_joined"] = len(cands) - len(mm)
        result.info["off_chain"] = int(stray.sum())

        with clock.stage("segment"):
            seg = segment(self.sessions["segmenter"], iso, centers, self.specs["segmenter"].preprocess, sp,
                          cfg.segment, max_batch=cfg.max_batch.get("segmenter"))
            seg, n_split = self._merge_splits(seg)
        if seg.dropped:
            warnings.append(f"{len(seg.dropped)} detected centre(s) gave no usable mask and were dropped")
        result.info["merged_duplicates"] = len(seg.merged)
        result.info["recentred"] = len(seg.recentred)
        result.info["split_merged"] = n_split
        if seg.voxels.size == 0:
            warnings.append("no spine found (no vertebra could be segmented)")
            return self._finish(result, clock)

        with clock.stage("label"):
            probs = self._classify(seg, iso)
            labs, conf, info = self._decode(seg, probs, canon, iso)
            seg, probs, labs, conf, _ = self._discard(seg, probs, labs, conf, info)
        # Recovery, the sacrum's regrowth and the pieces on the scan's faces: one stage, so that its
        # progress events and timing come once per CT.
        with clock.stage("recover"):
            if cfg.chain.recover:
                found = self._recover(seg, iso, canon, probs, labs, info)
                if found is not None:
                    seg, probs, labs, conf, info = found
            # A sacrum the field of view cuts to a slab smaller than a vertebra is all there is of it: ROIs
            # there see no more (on held-out phantoms its mask grew into the soft tissue in front of it).
            cut = _cut(seg.boxes, iso.shape[0])
            slab = cut & (seg.voxels < np.median(seg.voxels)) if len(seg.voxels) else cut
            sacrum = np.flatnonzero((labs == L.SACRUM) & ~slab) if cfg.segment.regrow_rounds > 0 else []
            joined = 0
            if len(sacrum):
                seg = regrow(seg, self.sessions["segmenter"], iso, sacrum, self.specs["segmenter"].preprocess,
                             self.spacing, cfg.segment, max_batch=cfg.max_batch.get("segmenter"))
                seg, probs, labs, conf, joined = self._join_sacral_piece(seg, probs, labs, conf, info, int(sacrum[0]))
            if cfg.segment.face_pieces:
                grown = keep_face_pieces(seg, self.sessions["segmenter"], iso, self.specs["segmenter"].preprocess,
                                         self.spacing, cfg.segment, max_batch=cfg.max_batch.get("segmenter"))
                result.info["face_pieces"] = int(np.count_nonzero(grown.voxels != seg.voxels))
                seg = grown
        if joined:
            moved = "stay" if joined == L.L6 else "moved one level down"
            warnings.append(f"the sacrum's top was segmented apart as {L.name(joined)} and joined to it; the "
                            f"labels above it {moved}")
        result.info["sacral_piece"] = int(joined > 0)
        result.info["recovered"] = len(seg.recovered)
        result.info["regrown"] = len(sacrum)
        if info.get("ribs") is not None:  # how many vertebrae the rib cue marked (engine.ribs)
            result.info["rib_bearing"] = int(np.count_nonzero(info["ribs"] == RIBS))
        with clock.stage("postprocess"):
            result.vertebrae = self._vertebrae(vol, canon, seg, labs, conf, probs, warnings)
            if info.get("warnings"):
                warnings.extend(info["warnings"])
        return self._finish(result, clock)

    def _join_sacral_piece(self, seg, probs, labs, conf, info, s: int):
        """The recovered vertebra right above the regrown sacrum ``s`` joins it when it is the sacrum's top
        (engine.chain.is_sacral_piece); the labels above it then move one level down. The last item is the
        joined vertebra's old label (0: none joined)."""
        sp = self.spacing
        j = above(seg.centers_kji, labs, s)
        if j is None or seg.boxes[j] is None or seg.boxes[s] is None:
            return seg, probs, labs, conf, 0
        face = interface(seg.owner, s, j, seg.boxes[s], seg.boxes[j]) * sp ** 2
        if not is_sacral_piece(face, float(seg.voxels[j]) * sp ** 3, j in seg.recovered, self.config.chain,
                               label=int(labs[j])):
            return seg, probs, labs, conf, 0
        up = np.flatnonzero((labs > 0) & (seg.centers_kji[:, 0] < seg.centers_kji[j, 0]))
        # Read as L6, the piece was counted as a level of its own, not as L5: the labels above stand.
        moved = labs[up] if labs[j] == L.L6 else one_level_down(labs[up])
        if moved is None:
            return seg, probs, labs, conf, 0
        old = int(labs[j])
        labs = labs.copy()
        labs[up] = moved
        keep = np.setdiff1d(np.arange(len(labs)), [j])
        if info.get("ribs") is not None:
            info["ribs"] = info["ribs"][keep]
        return merge(seg, [(s, j)]), probs[keep], labs[keep], conf[keep], old

    def _merge_splits(self, seg) -> tuple[Any, int]:
        """One vertebra segmented as two halves (engine.chain.close_pairs / is_split) becomes one."""
        p, sp = self.config.chain, self.spacing
        pairs = close_pairs(seg.centers_kji * sp, p)
        splits, used = [], set()
        if pairs:
            med = float(np.median(seg.voxels)) * sp ** 3
            for a, b in pairs:
                if used & {a, b}:
                    continue
                face = interface(seg.owner, a, b, seg.boxes[a], seg.boxes[b]) * sp ** 2
                if is_split(face, seg.voxels[a] * sp ** 3, seg.voxels[b] * sp ** 3, med, p):
                    splits.append((a, b))
                    used |= {a, b}
        return merge(seg, splits), len(splits)

    def _own_parts(self, seg, labels, probs, first: int, kind, side, iso) -> list[tuple[int, int]]:
        """(end, i): recoveries that are an end vertebra's own parts: near its centre along the spine and
        one bone with it (ChainParams.own_part_levels / own_part_interface), or what makes the end
        readable as its level at all (own_part_unread / own_part_read_gain). ``labels``/``probs``: the
        last decode's, of the ``first`` vertebrae found before."""
        p, sp = self.config.chain, self.spacing
        near = own_parts_beyond_ends(seg.centers_kji, labels, first, kind, side, p.own_part_levels)
        pairs = [(a, b) for a, b in near
                 if shares_bone(interface(seg.owner, a, b, seg.boxes[a], seg.boxes[b]) * sp ** 2,
                                float(seg.voxels[b]) * sp ** 3, p.own_part_interface)]
        if p.own_part_unread <= 0 or first < 1:
            return pairs
        used = {n for pair in pairs for n in pair}
        k, side = seg.centers_kji[:first, 0], np.asarray(side)
        for i in first + np.flatnonzero(np.asarray(kind) > 0):
            end = int(np.argmin(k) if side[i - first] < 0 else np.argmax(k))
            if {end, int(i)} & used:
                continue
            # The end's reading from the last decode stands unless its mask gave voxels back since.
            read = self._classify(seg, iso, end, end + 1)[0] if end in seg.reclaimed else probs[end]
            alone = near_level_p(read, labels[end], self.classes)
            if alone >= p.own_part_unread:
                continue
            union = near_level_p(self._classify(merge(seg, [(end, int(i))]), iso, end, end + 1)[0], labels[end],
                                 self.classes)
            if union - alone >= p.own_part_read_gain:
                pairs.append((end, int(i)))
                used |= {end, int(i)}
        return pairs

    def _classify(self, seg, iso, first: int = 0, stop: int | None = None) -> np.ndarray:
        """Labeller probabilities of vertebrae ``first`` .. ``stop`` - 1 (to the last by default)."""
        from engine.label import classify

        return classify(self.sessions["labeller"], seg.owner, iso, seg.centers_kji[first:stop], seg.boxes[first:stop],
                        self.specs["labeller"].preprocess, self.spacing, max_batch=self.config.max_batch.get("labeller"),
                        first=first)

    def _recover(self, seg, iso, canon: Canonical, probs, labs, info):
        """Segment the levels the decoder says were missed and the vertebrae cut at the chain's ends;
        label and decode again if any is found (engine.chain). None when nothing new was found.

        A gap of several levels can be decoded one level short (the spacing shrinks up the spine): the
        new masks then leave a gap that the next decode names, so missed levels are looked for again,
        up to ``recover_rounds`` times while each round finds something."""
        cfg = self.config
        found, n_found = None, 0
        end = np.zeros(len(seg.voxels), dtype=np.int64)  # -1 / +1: a part beyond the top / bottom end
        fresh = np.ones(len(seg.voxels), dtype=bool)  # found in the last round (all, before the first)
        # Recovered as a loose piece at the scan's face: nothing beyond it is in view (held-out 100104: a
        # second round beyond the arch of a cut L4 kept its spinous tip as one more vertebra, "L3").
        piece = np.zeros(len(seg.voxels), dtype=bool)
        for r in range(cfg.chain.recover_rounds):
            props = [missed_centres(seg.centers_kji, info["missed"])]
            kind = [np.zeros(len(props[0]), np.int64)]  # 0: missed level, 1: beyond an end, 2: a loose piece
            # Beyond an end whose vertebra was found in the last round, the next one may show too (C2
            # found above C3, then C1 above it); beyond an end already looked past, nothing new would.
            # Nor beyond a slab recovered at the scan's face: only loose bone hangs into view there, its
            # own arch or the spinous tip of a vertebra whose body is out of view (held-out 100002: L1's
            # slab at the top face, then its arch as one more vertebra, "T12", and L1 was lost).
            o = np.argsort(seg.centers_kji[:, 0], kind="stable")
            sides = [s for s, i in ((-1, o[0]), (1, o[-1]))
                     if fresh[i] and not piece[i] and not (r and _at_face(seg.boxes[i], s, iso.shape[0]))
                     ] if len(o) else []
            if cfg.chain.ends and sides:
                mid = np.median(seg.centers_kji[:, 0])
                for more_props in (end_centres(seg.centers_kji, labs, int(iso.shape[0]), cfg.chain.end_reach),
                                   border_fragments(iso, seg.owner, seg.centers_kji, labs, self.spacing)
                                   if cfg.chain.fragments else np.zeros((0, 3))):
                    props.append(more_props[np.isin(np.where(more_props[:, 0] < mid, -1, 1), sides)])
                kind += [np.ones(len(props[1]), np.int64), np.full(len(props[2]), 2)]
            props, kind = np.concatenate(props), np.concatenate(kind)
            if not len(props):
                break
            # A loose piece whose ROI segments a found vertebra is that vertebra's (its mask stopped
            # short of the face), so only a slab beyond an end may keep the voxels nobody holds.
            partial = kind == 1
            beyond = np.where(props[:, 0] < np.median(seg.centers_kji[:, 0]), -1, 1)  # top / bottom end
            # A loose piece says nothing of its level (a spinous tip) and its centroid is not the
            # vertebra's: the decoder places it next to its end. A slab beyond an end is mostly a whole
            # vertebra the detector missed: its scores and centre count as any other's.
            side = beyond * (kind == 2)
            # Found vertebrae all passed min_volume_mm3 already: the smaller floor only admits new ones.
            floor = np.where(kind == 2, min(cfg.segment.min_volume_mm3, cfg.chain.min_piece_mm3),
                             min(cfg.segment.min_volume_mm3, cfg.chain.min_partial_mm3))
            more = extend(seg, self.sessions["segmenter"], iso, props, self.specs["segmenter"].preprocess,
                          self.spacing, cfg.segment, max_batch=cfg.max_batch.get("segmenter"), partial=partial,
                          min_mm3=floor)
            m0 = len(seg.voxels)
            if not more.recovered:
                break
            src = -1 - np.asarray(more.source[m0:])
            end = np.concatenate([end, side[src]])
            piece = np.concatenate([piece, kind[src] == 2])
            kind_new, beyond_new = kind[src], beyond[src]
            pairs = same_vertebra_beyond_ends(kind_new, beyond_new, m0)
            if pairs:
                more = merge(more, pairs)
                end[[a for a, _ in pairs]] = beyond_new[[a - m0 for a, _ in pairs]]  # placed like a piece
                piece[[a for a, _ in pairs]] = True
                end = np.delete(end, [b for _, b in pairs])
                piece = np.delete(piece, [b for _, b in pairs])
                kind_new = np.delete(kind_new, [b - m0 for _, b in pairs])
                beyond_new = np.delete(beyond_new, [b - m0 for _, b in pairs])
            own = self._own_parts(more, labs, probs, m0, kind_new, beyond_new, iso)
            if own:
                more = merge(more, own)
                end = np.delete(end, [b for _, b in own])
                piece = np.delete(piece, [b for _, b in own])
            # Found vertebrae that gave voxels back, or took their own parts in, have new masks: all are
            # scored again then.
            probs = (self._classify(more, iso) if more.reclaimed or own
                     else np.concatenate([probs, self._classify(more, iso, first=m0)]))
            labs, conf, info = self._decode(more, probs, canon, iso, end)
            doubt = [] if r < cfg.chain.confirmed_rounds else [
                i for i in more.recovered
                if labs[i] and near_level_p(probs[i], labs[i], self.classes) < cfg.chain.confirm_min_p]
            n_found += len(more.recovered) - len(doubt)
            fresh = np.zeros(len(more.voxels), dtype=bool)
            fresh[more.recovered] = True
            more = replace(more, recovered=list(seg.recovered) + list(more.recovered))
            if doubt:  # see ChainParams.confirmed_rounds: left out, and the chain decoded without them
                keep = np.setdiff1d(np.arange(len(labs)), doubt)
                more, probs, end, fresh, piece = discard(more, doubt), probs[keep], end[keep], fresh[keep], piece[keep]
                labs, conf, info = self._decode(more, probs, canon, iso, end)
                info["warnings"].append(f"{len(doubt)} vertebra(e) recovered past a chain end left out: the labeller "
                                        f"does not read them as the levels the chain gives them")
            more, probs, labs, conf, keep = self._discard(more, probs, labs, conf, info)
            end, fresh, piece = end[keep], fresh[keep], piece[keep]
            seg, found = more, (more, probs, labs, conf, info)
            if doubt:
                break
        if found is None:
            return None
        if n_found:  # else only found vertebrae's own parts came back
            info["warnings"] = [f"{n_found} vertebra(e) missed by the detector found by the chain logic (a gap in "
                                f"the label sequence, or cut by the field of view at an end)"] + info["warnings"]
        return found

    def _detect(self, iso):
        band = select_slices(iso, self.spacing, self.config.detect)
        boxes = detect(self.sessions["detector"], iso, band.slices, self.specs["detector"].preprocess, self.spacing,
                       self.config.detect, max_batch=self.config.max_batch.get("detector"))
        return band, boxes

    def clustering_inputs(self, source: Volume | str | os.PathLike) -> tuple[np.ndarray, np.ndarray, ClusterParams]:
        """What the two-stage clustering gets for one CT: box centres (k, j, i) and sizes (h, w) in mm
        (host arrays) and the parameters it uses: real detection sets for `spinert bench` to time the
        clustering on."""
        from engine.io import read_volume

        vol = source if isinstance(source, Volume) else read_volume(source)
        band, boxes = self._detect(self.xp.asarray(to_canonical(vol, self.spacing).array))
        return to_numpy(boxes.centers_mm()), to_numpy(boxes.sizes_mm()), self.cluster_params(band)

    def cluster_params(self, band) -> ClusterParams:
        p = self.config.cluster
        # With a slice stride, a vertebra's boxes are stride*spacing mm apart along i: keep min_samples
        # reachable inside eps (ClusterParams' rule: min_samples <= 2 * floor(eps / step) + 1).
        step = max(1, int(self.config.detect.stride)) * self.spacing
        reach = 2 * int(np.floor(p.eps_mm / step)) + 1
        return replace(p, min_samples=max(1, min(p.min_samples, reach)))

    @staticmethod
    def _discard(seg, probs, labs, conf, info):
        """Without the candidates the decoder took for no vertebra of the chain (label 0); ``info``'s
        missed-level indices are renumbered to match. Returns them and the kept indices."""
        out = info.get("dropped", [])
        keep = np.setdiff1d(np.arange(len(labs)), out)
        if not out:
            return seg, probs, labs, conf, keep
        new_of = np.full(len(labs), -1, dtype=np.int64)
        new_of[keep] = np.arange(len(keep))
        info["missed"] = [(int(new_of[a]), int(new_of[b]), lv) for a, b, lv in info["missed"]]
        if info.get("ribs") is not None:
            info["ribs"] = info["ribs"][keep]
        info["dropped"] = []
        info["warnings"] = [f"{len(out)} candidate(s) taken for no vertebra of the chain (a piece segmented "
                            f"apart, a stray) and left out"] + info["warnings"]
        return discard(seg, out), probs[keep], labs[keep], conf[keep], keep

    def _decode(self, seg, probs: np.ndarray, canon: Canonical, iso,
                end=None) -> tuple[np.ndarray, np.ndarray, dict]:
        """Labels of ``seg``'s vertebrae (a mask that reaches the scan's first or last slice along the
        spine is cut by the field of view); ``end``: see ``decode_labels``. info["ribs"]: the rib cue."""
        from engine.label import decode_labels

        cut = _cut(seg.boxes, iso.shape[0])
        p = self.config.ribs
        ribs = (rib_evidence(iso, seg.owner, seg.centers_kji, seg.boxes, seg.voxels, cut, self.spacing, p)
                if p.rib_cue else None)
        labs, conf, info = decode_labels(probs, self.classes, canon.index_to_lps(seg.centers_kji), end, seg.voxels,
                                         cut, ribs)
        info["ribs"] = ribs
        return labs, conf, info

    def _vertebrae(self, vol: Volume, canon: Canonical, seg, labs, conf, probs, warnings) -> list[Vertebra]:
        from scipy.ndimage import find_objects

        owner = to_numpy(seg.owner)
        m = len(labs)
        # The index map onto the input grid in one resampling of the spine's box (SimpleITK), with the
        # boundaries from the probabilities.
        on_input = masks_to_input(owner, to_numpy(seg.prob) if seg.prob is not None else None, canon, vol,
                                  mask_threshold(self.config.segment, self.specs["segmenter"].preprocess))
        objs = list(find_objects(on_input, max_label=m)) + [None] * m
        centers_lps = apply_offset(canon.index_to_lps(seg.centers_kji), labs, self.centre_offset)
        out, recovered = [], set(seg.recovered)
        for n in np.argsort(seg.centers_kji[:, 0], kind="stable"):  # top to bottom (canonical k: to the feet)
            label = int(labs[n])
            box = objs[n]
            mask, off = None, (0, 0, 0)
            if box is not None:
                mask = on_input[box] == (n + 1)
                off = (box[2].start, box[1].start, box[0].start)  # array [k, j, i] -> (i, j, k)
            else:
                warnings.append(f"{L.name(label)}: mask vanished on the input grid (thinner than a voxel)")
            cbox = seg.boxes[n]
            if cbox is not None and box_at_face(cbox, owner.shape):
                warnings.append(f"{L.name(label)} touches the field-of-view border (partial vertebra)")
            scores = {int(c): round(float(p), 6) for c, p in zip(self.classes, probs[n]) if p >= 1e-4}
            out.append(Vertebra(label=label, name=L.name(label),
                                center_lps=tuple(float(x) for x in centers_lps[n]), confidence=float(conf[n]),
                                mask=mask, offset_ijk=tuple(int(o) for o in off), scores=scores,
                                recovered=int(n) in recovered))
        return out

    def _finish(self, result: SpineResult, clock: _Clock) -> SpineResult:
        for s in STAGES:
            clock.ms.setdefault(s, 0.0)
        clock.ms["total"] = sum(clock.ms[s] for s in STAGES)
        result.timings_ms = {k: round(v, 3) for k, v in clock.ms.items()}
        return result


def _at_face(box, side: int, extent: int) -> bool:
    """A mask reaches the scan's first (side -1) or last (+1) slice along the spine."""
    return box is None or (box[0].start <= 0 if side < 0 else box[0].stop >= extent)


def _cut(boxes, extent: int) -> np.ndarray:
    """(N,) bool: each mask reaches the scan's first or last slice along the spine (the field of view
    cuts it); a vanished mask (box None) counts as cut."""
    return np.array([_at_face(b, -1, extent) or _at_face(b, 1, extent) for b in boxes], dtype=bool)


def run(source: Volume | str | os.PathLike, **kw: Any) -> SpineResult:
    """One-shot convenience: load the models, run one CT, release the models."""
    with Cascade(**kw) as c:
        return c.run(source)
