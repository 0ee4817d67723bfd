"""Loop-closure configuration (the ``loop_closure`` section of ``config/vpr.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from selavpr_ros.config import check
from selavpr_ros.geometry.estimation import VerificationConfig
from selavpr_ros.retrieval.config import RetrievalConfig


@dataclass
class KeyframeGateConfig:
    """A frame becomes a keyframe (is added and, in mapping mode, queried) only when it is
    far enough from the last keyframe in time, in motion (when poses exist) and in appearance."""

    min_interval_s: float = 0.5
    min_translation_m: float = 0.0  # 0 disables the motion test
    min_rotation_deg: float = 0.0
    max_similarity: float = 1.0  # novelty: cosine to the last keyframe must be below this (1.0 disables)

    def __post_init__(self) -> None:
        check(self.min_interval_s >= 0, "keyframe.min_interval_s must be >= 0")
        check(self.min_translation_m >= 0 and self.min_rotation_deg >= 0, "keyframe motion thresholds must be >= 0")
        check(-1.0 <= self.max_similarity <= 1.0, "keyframe.max_similarity must be in [-1, 1]")


@dataclass
class ExclusionConfig:
    """Map entries too close in time to the query, in the same session, cannot be loop closures."""

    recent_s: float = 30.0  # same-session entries within this many seconds of the query
    recent_keyframes: int = 0  # and the newest N keyframes of the session

    def __post_init__(self) -> None:
        check(self.recent_s >= 0 and self.recent_keyframes >= 0, "exclusion windows must be >= 0")


@dataclass
class ConsistencyConfig:
    """Temporal consistency: a match must be confirmed by ``n`` consecutive queries whose
    matches lie within ``max_gap_s`` of each other in map time (n = 1 disables). One place per
    frame: accepted candidates of one map session farther than ``max_gap_s`` in map time, or
    ``max_distance_m`` apart by their poses (0 disables), from the best one are refused."""

    n: int = 3
    max_gap_s: float = 5.0
    max_distance_m: float = 10.0

    def __post_init__(self) -> None:
        check(self.n >= 1, "consistency.n must be >= 1")
        check(self.max_gap_s > 0, "consistency.max_gap_s must be > 0")
        check(self.max_distance_m >= 0, "consistency.max_distance_m must be >= 0")


@dataclass
class LoopClosureConfig:
    mode: Literal["mapping", "localization"] = "mapping"
    session: str = "live"  # map session that mapping mode appends to
    robot_id: int = 0  # robot of that session (the robot_from/robot_to of pose-graph edges)
    min_score: float = 0.5  # cosine of float descriptors (or 1 - 2 hamming / bits with binary only)
    min_local_matches: int = 0
    top_n: int = 3  # candidates reported per query
    report_excluded: bool = False  # also report the best excluded entries, with status EXCLUDED
    keyframe: KeyframeGateConfig = field(default_factory=KeyframeGateConfig)
    exclusion: ExclusionConfig = field(default_factory=ExclusionConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    geometry: VerificationConfig = field(default_factory=VerificationConfig)  # used with stage 'geometric'

    @property
    def verifies(self) -> bool:
        """Whether candidates are verified geometrically (stage ``geometric``)."""
        return "geometric" in self.retrieval.stages

    def __post_init__(self) -> None:
        check(-1.0 <= self.min_score <= 1.0, "min_score must be in [-1, 1]")
        check(self.min_local_matches >= 0, "min_local_matches must be >= 0")
        check(1 <= self.top_n <= self.retrieval.k, "top_n must be in [1, retrieval.k]")
        check(bool(self.session), "session must not be empty")
        check(0 <= self.robot_id <= 2**31 - 1, "robot_id must be in [0, 2^31 - 1]")
