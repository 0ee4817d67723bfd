"""Retrieval configuration and the one rule for stage lists (no faiss, no PyTorch here).

The loop-closure config, the node's parameters, the evaluation command line
and the retriever all read stages through :func:`parse_stages`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from selavpr_ros.config import check
from selavpr_ros.errors import ConfigError

Stage = Literal["binary", "float", "local", "geometric"]
# ``geometric`` is not a retrieval stage: the loop-closure engine and the evaluation verify the
# retrieved candidates with it (selavpr_ros.geometry); retrievers skip it.
STAGE_ORDER: tuple[Stage, ...] = ("binary", "float", "local", "geometric")
# Similarity elements per chunk in local matching: 4 MB in fp32, cache-sized (fastest measured).
DEFAULT_LOCAL_BUDGET = 1 << 20


def parse_stages(stages: str | Sequence[str], what: str = "retrieval.stages", pipeline: bool = True) -> list[Stage]:
    """Validated stage list from ``"binary,float"`` or a sequence: known names, no duplicates.

    A ``pipeline`` (what a retriever runs) must also keep the order binary, float,
    local, geometric and start with binary or float; otherwise (stages to report on) the
    names are returned in that order.
    """
    names = [s.strip() for s in stages.split(",")] if isinstance(stages, str) else [str(s).strip() for s in stages]
    names = [s for s in names if s]
    if not names:
        raise ConfigError(f"{what} must name at least one of {', '.join(STAGE_ORDER)}")
    unknown = [s for s in names if s not in STAGE_ORDER]
    if unknown:
        raise ConfigError(f"{what}: unknown stage {unknown[0]!r}; stages are {', '.join(STAGE_ORDER)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{what} has duplicates: {', '.join(names)}")
    if not pipeline:
        return [s for s in STAGE_ORDER if s in names]
    if names[0] not in ("binary", "float"):
        raise ConfigError(f"{what} must start with 'binary' or 'float', got {', '.join(names)}")
    ranks = [STAGE_ORDER.index(s) for s in names]
    if ranks != sorted(ranks):
        raise ConfigError(f"{what} must keep the order {', '.join(STAGE_ORDER)}; got {', '.join(names)}")
    return [STAGE_ORDER[r] for r in ranks]


@dataclass
class RetrievalConfig:
    """Retrieval stages and their sizes."""

    stages: list[Stage] = field(default_factory=lambda: ["binary", "float"])
    k: int = 100  # candidates from the first stage
    local_k: int = 20  # candidates re-ranked with local features
    index: Literal["flat", "ivf"] = "flat"  # binary stage: exhaustive, or an inverted file for huge maps
    ivf_nlist: int = 0  # lists; 0: the power of two nearest sqrt(rows) when trained
    ivf_nprobe: int = 0  # lists scanned per query; 0: a quarter of the lists (recall@100 0.955 at 10 M)
    ivf_retrain_growth: float = 2.0  # retrain the centroids when the map has grown by this factor
    local_budget: int = DEFAULT_LOCAL_BUDGET  # similarity elements per chunk in local matching
    local_device: str = "cpu"
    local_half: bool = False

    def __post_init__(self) -> None:
        self.stages = parse_stages(self.stages)
        check(self.k >= 1 and self.local_k >= 1, "retrieval.k and local_k must be >= 1")
        check(self.index in ("flat", "ivf"), f"retrieval.index must be 'flat' or 'ivf', got {self.index!r}")
        check(self.ivf_nlist == 0 or 16 <= self.ivf_nlist <= 65536, "retrieval.ivf_nlist must be 0 (auto) or 16..65536")
        check(self.ivf_nprobe >= 0, "retrieval.ivf_nprobe must be >= 0 (0: a quarter of the lists)")
        check(self.ivf_retrain_growth > 1.0, "retrieval.ivf_retrain_growth must be > 1")
