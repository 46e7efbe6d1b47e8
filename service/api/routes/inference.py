"""Model operations: encode, reconstruct, score, generate, predict.

Each answers 409 `unsupported_operation` (naming what the model serves) when the model's kind
does not serve it, and 422 naming the expected shape when the rows do not fit the model.
Inputs are raw rows: the model applies its own preprocessing.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ml.serving import UnsupportedOperation
from service.api.deps import SessionDep, SettingsDep, get_store
from service.db import models as model_repo
from service.errors import ServiceError
from service.inference import ModelCache, ModelInfo, to_json_array
from service.schemas.common import ERROR_RESPONSES

router = APIRouter(prefix="/v1/models", tags=["inference"], responses=ERROR_RESPONSES)


def get_model_cache(request: Request) -> ModelCache:
    """The app's loaded-model cache, made on first use (so start-up loads no model code)."""
    state = request.app.state
    cache = getattr(state, "model_cache", None)
    if cache is None:
        cache = state.model_cache = ModelCache(state.settings, get_store(request))
    return cache  # type: ignore[no-any-return]


CacheDep = Annotated[ModelCache, Depends(get_model_cache)]


class Rows(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"inputs": [[0.1, 0.2, 0.3]]}]}, extra="forbid"
    )
    inputs: list[Any] = Field(
        description="Rows in the data's raw units; each row of the model's input shape "
        "(or flattened to as many numbers).",
        min_length=1,
    )


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(16, ge=1, description="Number of samples.")
    seed: int | None = Field(None, ge=0, lt=2**31, description="Same seed, same samples.")
    sampler: str | None = Field(None, description="Diffusion: `ddpm` or `ddim`.")
    steps: int | None = Field(None, ge=1, description="Diffusion: sampling steps.")


def _rows(raw: list[Any], info: ModelInfo, limit: int) -> np.ndarray:
    if len(raw) > limit:
        raise ServiceError(
            "validation_error", f"{len(raw)} rows is more than the limit of {limit} per request"
        )
    expected = [int(s) for s in info.input_shape]
    try:
        x = np.asarray(raw, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise ServiceError(
            "validation_error",
            f"inputs must be a list of numeric rows of shape {expected}: {exc}",
            {"expected_shape": expected},
        ) from None
    size = int(np.prod(expected)) if expected else 0
    if list(x.shape[1:]) != expected:
        if x.ndim == 2 and x.shape[1] == size:
            x = x.reshape(len(x), *expected)
        else:
            raise ServiceError(
                "validation_error",
                f"each row must have shape {expected} (or {size} numbers); got rows of shape "
                f"{list(x.shape[1:])}",
                {"expected_shape": expected, "got_shape": list(x.shape[1:])},
            )
    if not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0][0])
        raise ServiceError("validation_error", f"row {bad} holds a non-finite number")
    return x


def _servable(session: Any, cache: ModelCache, ref: str, operation: str) -> tuple[Any, ModelInfo]:
    info = ModelInfo.of(model_repo.resolve(session, ref))
    session.close()  # the database is not needed while the model computes
    if operation not in info.capabilities:
        raise ServiceError(
            "unsupported_operation",
            f"model {ref!r} ({info.kind}) does not serve {operation}; it serves "
            f"{', '.join(info.capabilities) or 'nothing'}",
            {"serves": info.capabilities},
        )
    return cache.get(info), info


def _answer(result: dict[str, Any]) -> dict[str, Any]:
    return {key: to_json_array(value) for key, value in result.items()}


def _infer(
    session: Any, cache: ModelCache, settings: Any, ref: str, operation: str, body: Rows
) -> dict[str, Any]:
    servable, info = _servable(session, cache, ref, operation)
    x = _rows(body.inputs, info, settings.max_inference_rows)
    try:
        return _answer(servable.run(operation, x))
    except UnsupportedOperation as exc:
        raise ServiceError("unsupported_operation", str(exc)) from exc


@router.post("/{ref}/encode")
def encode(
    ref: str, body: Rows, session: SessionDep, cache: CacheDep, settings: SettingsDep
) -> Any:
    """`{"latents": [[…]]}`; a VAE's latents are the means, with `"log_variances"`."""
    return _infer(session, cache, settings, ref, "encode", body)


@router.post("/{ref}/reconstruct")
def reconstruct(
    ref: str, body: Rows, session: SessionDep, cache: CacheDep, settings: SettingsDep
) -> Any:
    """`{"reconstructions": [[…]]}` in the data's raw units."""
    return _infer(session, cache, settings, ref, "reconstruct", body)


@router.post("/{ref}/score")
def score(ref: str, body: Rows, session: SessionDep, cache: CacheDep, settings: SettingsDep) -> Any:
    """Anomaly scores, the calibrated threshold, and `is_anomaly` per row."""
    return _infer(session, cache, settings, ref, "score", body)


@router.post("/{ref}/predict")
def predict(
    ref: str, body: Rows, session: SessionDep, cache: CacheDep, settings: SettingsDep
) -> Any:
    """Cluster ids, with probabilities or distances where the kind has them."""
    return _infer(session, cache, settings, ref, "predict", body)


@router.post("/{ref}/generate")
def generate(
    ref: str, body: GenerateRequest, session: SessionDep, cache: CacheDep, settings: SettingsDep
) -> Any:
    """`{"samples": […]}` in the data's raw units; the same seed gives the same samples."""
    if body.n > settings.max_generate:
        raise ServiceError(
            "validation_error", f"n = {body.n} is more than the limit of {settings.max_generate}"
        )
    servable, _ = _servable(session, cache, ref, "generate")
    options = body.model_dump(exclude_none=True)
    try:
        return _answer(servable.run("generate", None, **options))
    except UnsupportedOperation as exc:
        raise ServiceError("unsupported_operation", str(exc)) from exc
    except ValueError as exc:
        raise ServiceError("validation_error", str(exc)) from exc


@router.get(
    "/{ref}/{picture}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "a PNG image"}},
)
def picture(ref: str, picture: str, session: SessionDep, cache: CacheDep) -> Response:
    """One of the pictures the model's kind draws (its `pictures` list: samples, embedding, …)."""
    row = model_repo.resolve(session, ref)
    info, available = ModelInfo.of(row), list(row.pictures or [])
    session.close()
    if picture not in available:
        raise ServiceError(
            "not_found",
            f"model {ref!r} has no picture {picture!r}; it has {', '.join(available) or 'none'}",
            {"pictures": available},
        )
    servable = cache.get(info)
    draw = getattr(servable, "picture", None)
    if draw is None:
        raise ServiceError("not_found", f"model {ref!r} draws no pictures")
    return Response(draw(picture), media_type="image/png")
