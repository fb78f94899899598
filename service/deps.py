"""FastAPI dependencies as named `Annotated` aliases. Tests swap them with
`app.dependency_overrides[get_estimator] = ...`."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from service.errors import ApiError
from service.limits import PipelineRunner
from service.metrics import Metrics
from service.results import PoseEstimator
from service.settings import Settings
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return cast(ServiceState, request.app.state.service)


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_app_settings(state: StateDep) -> Settings:
    return state.settings


def get_metrics(state: StateDep) -> Metrics:
    return state.metrics


def get_estimator(state: StateDep) -> PoseEstimator:
    """The loaded, warmed-up estimator, or 503 saying why there is none."""
    if state.estimator is None:
        raise ApiError(503, "not_ready", f"the model is not ready: {state.readiness.reason}")
    return state.estimator


def get_runner(state: StateDep) -> PipelineRunner:
    if state.runner is None:
        raise ApiError(503, "not_ready", "the service is not running (no lifespan)")
    return state.runner


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EstimatorDep = Annotated[PoseEstimator, Depends(get_estimator)]
RunnerDep = Annotated[PipelineRunner, Depends(get_runner)]
