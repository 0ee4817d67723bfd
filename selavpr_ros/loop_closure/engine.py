"""Turn raw retrieval results into loop closures a SLAM back-end can trust.

Per frame: keyframe gate -> retrieval with the temporal exclusion applied
inside the search -> minimum score -> top-N -> geometric verification (stage
``geometric``: relative pose from correspondences) -> temporal consistency
over consecutive queries (as ORB-SLAM's consistent groups) -> one place per
frame (accepted candidates far apart in one session refuse all but the best) -> in mapping mode
the keyframe is then added to the map, with its camera model and keypoints. Every reported candidate carries a status
and a human-readable reason. Given the same inputs the output is the same.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

from selavpr_ros.errors import MapError
from selavpr_ros.geometry.estimation import RelativePose
from selavpr_ros.loop_closure.config import LoopClosureConfig
from selavpr_ros.mapdb.database import MapDatabase
from selavpr_ros.models.config import PreprocessConfig
from selavpr_ros.retrieval.retriever import Candidates, Retriever
from selavpr_ros.retrieval.verification import QueryView, Verifier
from selavpr_ros.types import Descriptors, KeyframeRecord, Pose


class Status(enum.IntEnum):
    """Candidate status; values match the ``status`` constants of LoopClosureCandidate.msg."""

    ACCEPTED = 0
    LOW_SCORE = 1
    INCONSISTENT = 2
    EXCLUDED = 3
    GEOMETRY_REJECTED = 4


class Verification(enum.IntEnum):
    """Outcome of the geometric stage; values match the ``VERIFICATION_*`` constants of the message."""

    NOT_RUN = 0  # the stage is off, or the candidate failed an earlier test
    VERIFIED = 1
    REJECTED = 2
    SKIPPED = 3  # no camera model or keypoints for the query or the keyframe


@dataclass
class LoopCandidate:
    query_stamp_ns: int
    query_keyframe_id: int  # -1 when the query was not added to the map
    match_keyframe_id: int
    match_row: int
    match_stamp_ns: int
    match_session: str
    score: float
    hamming: int
    local_matches: int
    rank: int
    status: Status
    reason: str
    match_pose: Pose | None = None
    verification: Verification = Verification.NOT_RUN
    geometry: RelativePose | None = None  # outcome of the geometric stage, when it ran
    match_slam_id: int | None = None  # the SLAM's id of the matched keyframe, when it gave one
    match_robot_id: int = 0
    query_slam_id: int | None = None
    robot_id: int = 0  # of the query
    match_frame_id: str = ""  # camera frame of the matched keyframe

    @property
    def relative_pose(self) -> RelativePose | None:
        """Pose of the match camera in the query camera frame, when verified."""
        return self.geometry if self.verification == Verification.VERIFIED else None


@dataclass
class FrameResult:
    stamp_ns: int
    is_keyframe: bool
    keyframe_id: int = -1
    candidates: list[LoopCandidate] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    skipped_reason: str = ""

    @property
    def accepted(self) -> list[LoopCandidate]:
        return [c for c in self.candidates if c.status == Status.ACCEPTED]


@dataclass
class _Keyframe:
    stamp_ns: int
    descriptor: np.ndarray
    pose: Pose | None


class KeyframeGate:
    """Time, motion and appearance novelty tests against the last keyframe."""

    def __init__(self, config) -> None:
        self.config = config
        self.last: _Keyframe | None = None

    def check(self, stamp_ns: int, descriptor: np.ndarray, pose: Pose | None) -> str:
        """Empty string when the frame is a keyframe, else the reason it is not."""
        last, cfg = self.last, self.config
        if last is None:
            return ""
        dt = (stamp_ns - last.stamp_ns) * 1e-9
        if dt < cfg.min_interval_s:
            return f"{dt:.2f} s after the last keyframe (min_interval_s {cfg.min_interval_s})"
        if pose is not None and last.pose is not None and (cfg.min_translation_m > 0 or cfg.min_rotation_deg > 0):
            moved = float(np.linalg.norm(np.subtract(pose.position, last.pose.position)))
            turned = abs(np.degrees(np.angle(np.exp(1j * (pose.yaw() - last.pose.yaw())))))
            far = cfg.min_translation_m > 0 and moved >= cfg.min_translation_m
            turned_enough = cfg.min_rotation_deg > 0 and turned >= cfg.min_rotation_deg
            if not (far or turned_enough):  # a disabled test (0) never makes a keyframe on its own
                return f"moved {moved:.2f} m and turned {turned:.1f} deg since the last keyframe"
        if cfg.max_similarity < 1.0:
            sim = float(np.dot(descriptor, last.descriptor))
            if sim >= cfg.max_similarity:
                return f"similarity {sim:.3f} to the last keyframe >= max_similarity {cfg.max_similarity}"
        return ""

    def accept(self, stamp_ns: int, descriptor: np.ndarray, pose: Pose | None) -> None:
        self.last = _Keyframe(stamp_ns, np.asarray(descriptor, np.float32).copy(), pose)


class LoopClosureEngine:
    """Stateful loop-closure detection over a map (mapping: read-write; localization: read-only)."""

    def __init__(self, database: MapDatabase, config: LoopClosureConfig | None = None,
                 preprocess: PreprocessConfig | None = None) -> None:
        self.config = config or LoopClosureConfig()
        if self.config.mode == "mapping" and not database.writable:
            raise MapError(f"{database.path}: mapping mode needs the map open for writing")
        self.db = database
        self.retriever = Retriever(database, self.config.retrieval)
        self.verifier = Verifier(database, self.config.geometry, preprocess) if self.config.verifies else None
        self.gate = KeyframeGate(self.config.keyframe)
        # The previous query's candidates above min_score: (match session id, match stamp, chain length).
        # Chains carry their length forward, so one query of history is all consistency needs.
        self._previous: list[tuple[int, int, int]] = []
        self._verify_ms = 0.0
        self._session_id: int | None = None  # this session's id once it has keyframes (mapping mode)
        if self.config.mode == "mapping":
            self._session_id = database.find_session(self.config.session, self.config.robot_id)
            self._resume()

    def _resume(self) -> None:
        """Continue a session after a restart: the gate starts from its newest keyframe."""
        newest = self.db.newest_keyframe(self.config.session)
        if newest is not None:
            record, descriptor = newest
            self.gate.accept(record.stamp_ns, descriptor, record.pose)

    # -- exclusion ----------------------------------------------------------------
    def _exclusion_mask(self, stamp_ns: int) -> np.ndarray | None:
        """Rows the query may match: not same-session and recent (time window or newest N keyframes)."""
        if self._session_id is None:
            return None
        rows = self.db.rows[: self.retriever.indexed]
        same = rows["session"] == self._session_id
        if not same.any():
            return None
        cfg = self.config.exclusion
        excluded = same & (np.abs(rows["stamp_ns"] - stamp_ns) < int(cfg.recent_s * 1e9))
        if cfg.recent_keyframes:
            excluded[np.flatnonzero(same)[-cfg.recent_keyframes :]] = True
        return ~excluded if excluded.any() else None

    # -- main entry -----------------------------------------------------------------
    def process(self, query: Descriptors, record: KeyframeRecord, view: QueryView | None = None,
                gate: bool = True) -> FrameResult:
        """Handle one described frame (``query`` has one row); see the module docstring.

        ``view`` carries the frame's camera model and keypoints for the geometric stage.
        ``gate=False`` makes the frame a keyframe whatever the gate says (a SLAM that
        chose its own keyframes asks about each of them).
        """
        t0 = time.perf_counter()
        descriptor = query.descriptors[0]
        record.robot_id = self.config.robot_id
        reason = self.gate.check(record.stamp_ns, descriptor, record.pose) if gate else ""
        if reason:
            return FrameResult(record.stamp_ns, False, skipped_reason=reason)
        self.retriever.sync()
        allowed = self._exclusion_mask(record.stamp_ns)
        cand = self.retriever.search(query, allowed)
        result = FrameResult(record.stamp_ns, True, timings_ms=dict(cand.timings_ms))
        result.candidates = self._judge(cand, record, view)
        if self.verifier is not None:
            result.timings_ms["geometric"] = self._verify_ms
        if self.config.report_excluded and allowed is not None:
            result.candidates += self._excluded(query, allowed, record)
        if self.config.mode == "mapping":
            keypoints = [view.keypoints] if view is not None and view.keypoints is not None else None
            ids = self.db.add(query, [record], session=self.config.session, keypoints=keypoints)
            if self._session_id is None:  # the session's first keyframe created it
                self._session_id = self.db.find_session(self.config.session, self.config.robot_id)
            result.keyframe_id = ids[0]
            for c in result.candidates:
                c.query_keyframe_id = ids[0]
        self.gate.accept(record.stamp_ns, descriptor, record.pose)
        result.timings_ms["total"] = (time.perf_counter() - t0) * 1000
        return result

    def _score(self, cand: Candidates) -> np.ndarray:
        if not np.isnan(cand.similarity).all():
            return cand.similarity.astype(np.float64)
        return 1.0 - 2.0 * cand.hamming / self.db.layout.code_bits

    def _verify(self, view: QueryView | None, rows: list[int],
                records: list[KeyframeRecord]) -> dict[int, RelativePose]:
        t0 = time.perf_counter()
        poses = {}
        if self.verifier is not None and rows:
            view = view or QueryView(skip_reason="the frame has no camera model (no CameraInfo)")
            poses = dict(zip(rows, self.verifier.verify(view, rows, records)))
        self._verify_ms = (time.perf_counter() - t0) * 1000
        return poses

    def _judge(self, cand: Candidates, record: KeyframeRecord, view: QueryView | None = None) -> list[LoopCandidate]:
        cfg = self.config
        top = cand.take(np.arange(min(cfg.top_n, len(cand))))
        scores = self._score(top)
        meta = self.db.rows[top.rows] if len(top) else self.db.rows[:0]
        records = self.db.records(top.rows) if len(top) else []
        low = [self._low_score(float(scores[i]), int(top.local_matches[i])) for i in range(len(top))]
        checked = [i for i in range(len(top)) if not low[i]]
        poses = self._verify(view, [int(top.rows[i]) for i in checked], [records[i] for i in checked])
        passing: list[tuple[int, int, int]] = []
        out = []
        for i in range(len(top)):
            sid, stamp, row = int(meta["session"][i]), int(meta["stamp_ns"][i]), int(top.rows[i])
            score = float(scores[i])
            pose = poses.get(row)
            verification = Verification.NOT_RUN
            if pose is not None:
                verification = Verification.VERIFIED if pose.valid else \
                    Verification.SKIPPED if pose.skipped else Verification.REJECTED
            geometry = "" if pose is None else f"; geometry: {pose.reason}"
            if low[i]:
                status, why = Status.LOW_SCORE, low[i]
            elif verification == Verification.REJECTED or \
                    (verification == Verification.SKIPPED and cfg.geometry.required):
                status, why = Status.GEOMETRY_REJECTED, f"score {score:.3f}{geometry}"
            else:
                chain = 1 + self._chain_before(sid, stamp)
                passing.append((sid, stamp, chain))
                if chain >= cfg.consistency.n:
                    status, why = Status.ACCEPTED, f"score {score:.3f}, consistent over {chain} queries{geometry}"
                else:
                    status = Status.INCONSISTENT
                    why = f"seen in {chain} of {cfg.consistency.n} consecutive queries{geometry}"
            c = self._candidate(record, row, records[i], score, top, i, i + 1, status, why)
            c.verification = verification
            c.geometry = pose
            out.append(c)
        self._previous = passing
        self._one_place(out, meta)
        return out

    def _one_place(self, out: list[LoopCandidate], meta: np.ndarray) -> None:
        """A frame is at one place: accepted candidates of the best one's map session (the best
        verified one, else the best scored) that lie farther from it than ``consistency.max_gap_s``
        in map time or ``max_distance_m`` by their poses are refused (repeated textures: one wall
        photographed twice looks like one place)."""
        accepted = [i for i, c in enumerate(out) if c.status == Status.ACCEPTED]
        if len(accepted) < 2:
            return
        cfg = self.config.consistency
        verified = [i for i in accepted if out[i].verification == Verification.VERIFIED]
        first = (verified or accepted)[0]  # geometry outranks appearance; then the best score
        best = out[first]
        session, stamp = int(meta["session"][first]), int(meta["stamp_ns"][first])
        for i in accepted:
            if i == first:
                continue
            if int(meta["session"][i]) != session:
                continue  # another session's clock and frame: nothing to compare
            apart_s = abs(int(meta["stamp_ns"][i]) - stamp) * 1e-9
            apart_m = float("nan")
            here, there = out[i].match_pose, best.match_pose
            if here is not None and there is not None:
                apart_m = float(np.linalg.norm(np.subtract(here.position, there.position)))
            if apart_s > cfg.max_gap_s:
                why = f"{apart_s:.1f} s apart in map time > max_gap_s {cfg.max_gap_s:g}"
            elif cfg.max_distance_m > 0 and apart_m > cfg.max_distance_m:
                why = f"{apart_m:.1f} m apart > max_distance_m {cfg.max_distance_m:g}"
            else:
                continue
            out[i].status = Status.INCONSISTENT
            out[i].reason = f"another place than keyframe {best.match_keyframe_id} ({why}); {out[i].reason}"

    def _low_score(self, score: float, local: int) -> str:
        """Why a candidate fails the retrieval thresholds; empty when it passes."""
        cfg = self.config
        if score < cfg.min_score:
            return f"score {score:.3f} < min_score {cfg.min_score}"
        if 0 <= local < cfg.min_local_matches:
            return f"{local} local matches < min_local_matches {cfg.min_local_matches}"
        return ""

    def _chain_before(self, session: int, stamp: int) -> int:
        """Length of the consistent chain that the previous query offers for a match at (session, stamp)."""
        gap = int(self.config.consistency.max_gap_s * 1e9)
        prev = [c for s, t, c in self._previous if s == session and abs(t - stamp) <= gap]
        return max(prev, default=0)

    def _candidate(self, record, row, match, score, cand, i, rank, status, reason) -> LoopCandidate:
        return LoopCandidate(
            query_stamp_ns=record.stamp_ns,
            query_keyframe_id=-1,
            match_keyframe_id=match.keyframe_id,
            match_row=row,
            match_stamp_ns=match.stamp_ns,
            match_session=match.session,
            score=score,
            hamming=int(cand.hamming[i]),
            local_matches=int(cand.local_matches[i]),
            rank=rank,
            status=status,
            reason=reason,
            match_pose=match.pose,
            match_slam_id=match.slam_id,
            query_slam_id=record.slam_id,
            robot_id=record.robot_id,
            match_robot_id=match.robot_id,
            match_frame_id=match.frame_id,
        )

    def _excluded(self, query: Descriptors, allowed: np.ndarray, record: KeyframeRecord) -> list[LoopCandidate]:
        """Best matches among excluded rows (diagnostics: why did my loop not close?)."""
        cand = self.retriever.search(query, ~allowed)
        top = cand.take(np.arange(min(self.config.top_n, len(cand))))
        scores = self._score(top)
        records = self.db.records(top.rows) if len(top) else []
        window = self.config.exclusion.recent_s
        return [
            self._candidate(
                record,
                int(top.rows[i]),
                records[i],
                float(scores[i]),
                top,
                i,
                0,
                Status.EXCLUDED,
                f"same session within the exclusion window ({window} s / newest keyframes)",
            )
            for i in range(len(top))
        ]

