"""What one app instance holds while it runs: settings, metrics, readiness, estimator, runner."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum

from service.decode_budget import DecodeBudget
from service.limits import PipelineRunner
from service.metrics import Metrics
from service.results import PoseEstimator
from service.settings import Settings

log = logging.getLogger(__name__)


class Phase(StrEnum):
    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    LOAD_FAILED = "load_failed"
    DRAINING = "draining"


@dataclass
class Readiness:
    """Ready = bundle loaded, warmed up, not draining. Draining is final."""

    phase: Phase = Phase.LOADING
    reason: str = "loading the model bundle"

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def advance(self, phase: Phase, reason: str) -> None:
        if self.phase is Phase.DRAINING:
            return
        self.phase, self.reason = phase, reason

    def drain(self) -> None:
        if self.phase is not Phase.DRAINING:
            self.phase, self.reason = Phase.DRAINING, "shutting down: finishing in-flight requests"
            log.info("draining: /health/ready now answers 503")


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    readiness: Readiness = field(default_factory=Readiness)
    estimator: PoseEstimator | None = None  # set once loaded and warmed up
    runner: PipelineRunner | None = None  # set while the lifespan runs
    decode_budget: DecodeBudget | None = None  # set while the lifespan runs
