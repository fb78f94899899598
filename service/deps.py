"""FastAPI dependencies as named `Annotated` aliases. Tests swap them with
`app.dependency_overrides[get_estimator] = ...`.

They are `async def` although they never await: FastAPI runs a plain `def` dependency in its
thread pool, and the five hops a /pose request made that way cost about 1 ms on 2 cores (and
queued /health/ready behind busy pool threads under load)."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from service.decode_budget import DecodeBudget
from service.errors import ApiError
from service.limits import PipelineRunner
from service.metrics import Metrics
from service.results import PoseEstimator
from service.settings import Settings
from service.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    return cast(ServiceState, request.app.state.service)


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_app_settings(state: StateDep) -> Settings:
    return state.settings


async def get_metrics(state: StateDep) -> Metrics:
    return state.metrics


async def get_estimator(state: StateDep) -> PoseEstimator:
    """The loaded, warmed-up estimator, or 503 saying why there is none."""
    if state.estimator is None:
        raise ApiError(503, "not_ready", f"the model is not ready: {state.readiness.reason}")
    return state.estimator


async def get_runner(state: StateDep) -> PipelineRunner:
    if state.runner is None:
        raise ApiError(503, "not_ready", "the service is not running (no lifespan)")
    return state.runner


async def get_decode_budget(state: StateDep) -> DecodeBudget:
    if state.decode_budget is None:
        raise ApiError(503, "not_ready", "the service is not running (no lifespan)")
    return state.decode_budget


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
BudgetDep = Annotated[DecodeBudget, Depends(get_decode_budget)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EstimatorDep = Annotated[PoseEstimator, Depends(get_estimator)]
RunnerDep = Annotated[PipelineRunner, Depends(get_runner)]
