"""Model operations: encode, reconstruct, score, generate, predict, drift, and pictures.

Rows come as JSON, `.npy` or Arrow IPC and answers go back in the format `Accept` asks for (see
`service.bodies`); the operations themselves are `service.serving`'s.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from service import bodies, serving
from service import drift as drift_tests
from service.api.deps import ModelCacheDep
from service.auth import current
from service.inference import ModelCache
from service.schemas.common import ERROR_RESPONSES
from service.schemas.drift import (
    DEFAULT_ALPHA,
    DEFAULT_PERMUTATIONS,
    Alpha,
    DriftOut,
    Permutations,
    Seed,
)
from service.schemas.inference import GenerateRequest

router = APIRouter(prefix="/v1/models", tags=["inference"], responses=ERROR_RESPONSES)

ROW_OPERATIONS = {
    "encode": '`{"latents": [[…]]}`; a VAE\'s latents are the means, with `"log_variances"`.',
    "reconstruct": '`{"reconstructions": [[…]]}` in the data\'s raw units.',
    "score": "Anomaly scores, the calibrated threshold, and `is_anomaly` per row.",
    "predict": "Cluster ids, with probabilities or distances where the kind has them.",
}


def _respond(request: Request, operation: str, answer: dict[str, Any]) -> Response:
    accept = request.headers.get("accept", "")
    encoded = bodies.encode_answer(answer, accept, primary=serving.PRIMARY[operation])
    return Response(encoded.content, media_type=encoded.media_type, headers=encoded.headers)


def _caller(request: Request, cache: ModelCache, ref: str) -> dict[str, Any]:
    """What every model operation is given: the app's caches, the model reference, and who
    asks (tenant scope and key, for admission), with the client's disconnect check."""
    state, principal = request.app.state, current(request)
    return {
        "cache": cache,
        "sessions": state.sessions,
        "settings": state.settings,
        "ref": ref,
        "scope": principal.scope,
        "key": principal.key_id,
        "disconnected": request.is_disconnected,
    }


def _row_route(operation: str, summary: str) -> None:
    """`POST /v1/models/{ref}/<operation>` over rows."""

    async def route(ref: str, request: Request, cache: ModelCacheDep) -> Response:
        answer = await serving.run_rows(
            **_caller(request, cache, ref),
            operation=operation,
            body=request.body,
            content_type=request.headers.get("content-type", ""),
        )
        return _respond(request, operation, answer)

    route.__name__ = route.__qualname__ = operation
    route.__doc__ = summary
    router.post(
        f"/{{ref}}/{operation}",
        openapi_extra=bodies.ROWS_BODY,
        responses=bodies.answers(operation),
    )(route)


for _operation, _summary in ROW_OPERATIONS.items():
    _row_route(_operation, _summary)


@router.post("/{ref}/generate", responses=bodies.answers("generate"))
async def generate(
    ref: str, body: GenerateRequest, request: Request, cache: ModelCacheDep
) -> Response:
    """`{"samples": […]}` in the data's raw units; the same seed gives the same samples."""
    options = body.model_dump(exclude_none=True)
    answer = await serving.generate(**_caller(request, cache, ref), options=options)
    return _respond(request, "generate", answer)


@router.post(
    "/{ref}/drift",
    openapi_extra=bodies.ROWS_BODY,
    responses={200: {"model": DriftOut, "description": "The tests' answer (JSON)"}},
)
async def drift(
    ref: str,
    request: Request,
    cache: ModelCacheDep,
    permutations: Permutations = DEFAULT_PERMUTATIONS,
    alpha: Alpha = DEFAULT_ALPHA,
    seed: Seed = 0,
) -> Response:
    """Whether the rows drifted from the model's training rows: an MMD permutation test on its
    reference sample, and a Kolmogorov–Smirnov test per feature (Benjamini–Hochberg); for the
    models that serve `score`."""
    answer = await drift_tests.run(
        **_caller(request, cache, ref),
        body=request.body,
        content_type=request.headers.get("content-type", ""),
        options={"permutations": permutations, "alpha": alpha, "seed": seed},
    )
    encoded = bodies.encode_answer(answer, bodies.JSON, primary="p_value")  # JSON whatever Accept
    return Response(encoded.content, media_type=encoded.media_type)


@router.get(
    "/{ref}/{picture}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {"schema": bodies.BINARY}}, "description": "a PNG"}},
)
async def picture(ref: str, picture: str, request: Request, cache: ModelCacheDep) -> Response:
    """One of the pictures the model's kind draws (its `pictures` list: samples, embedding, …)."""
    sessions, scope = request.app.state.sessions, current(request).scope
    png = await serving.picture(cache, sessions, ref=ref, scope=scope, name=picture)
    return Response(png, media_type="image/png")
