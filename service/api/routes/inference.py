"""Model operations: encode, reconstruct, score, generate, predict, and pictures.

Each answers 409 `unsupported_operation` (naming what the model serves) when the model's kind
does not serve it, and 422 naming the expected shape when the rows do not fit the model.
Inputs are raw rows: the model applies its own preprocessing. Rows come as JSON
(`{"inputs": [[…]]}`), as a NumPy array (`Content-Type: application/x-npy`) or as an Arrow IPC
stream (`application/vnd.apache.arrow.stream`, see `service.arrow_ipc`); answers are JSON, or
NumPy with `Accept: application/x-npy` (the main array) or `application/x-npz` (all arrays), or
Arrow with `Accept: application/vnd.apache.arrow.stream` (all arrays).
Concurrent requests for one model are micro-batched (`THERMOML_BATCHING`).
"""

from __future__ import annotations

import functools
import io
import json
import math
import time
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from ml.core.serving import UnsupportedOperation
from service import arrow_ipc, prom
from service.api.deps import get_store
from service.db import models as model_repo
from service.errors import ServiceError
from service.inference import ModelCache, ModelInfo, to_json_array
from service.schemas.common import ERROR_RESPONSES

router = APIRouter(prefix="/v1/models", tags=["inference"], responses=ERROR_RESPONSES)

NPY = "application/x-npy"
NPZ = "application/x-npz"
PRIMARY = {
    "encode": "latents",
    "reconstruct": "reconstructions",
    "score": "scores",
    "predict": "clusters",
    "generate": "samples",
}


async def get_model_cache(request: Request) -> ModelCache:
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


ROWS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": Rows.model_json_schema()},
            NPY: {"schema": {"type": "string", "format": "binary"}},
            arrow_ipc.ARROW: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or NumPy when asked with `Accept`",
        "content": {"application/json": {}, NPY: {}, NPZ: {}, arrow_ipc.ARROW: {}},
    }
}


async def _info(request: Request, ref: str) -> ModelInfo:
    """The models row behind `ref`, reused for `model_ref_ttl` seconds."""
    state = request.app.state
    refs: dict[str, tuple[float, ModelInfo]] = state.__dict__.setdefault("model_refs", {})
    now = time.monotonic()
    hit = refs.get(ref)
    if hit is not None and hit[0] > now:
        return hit[1]

    def lookup() -> ModelInfo:
        with state.sessions() as session:
            return ModelInfo.of(model_repo.resolve(session, ref))

    info = await run_in_threadpool(lookup)
    refs[ref] = (now + state.settings.model_ref_ttl, info)
    return info


def forget_ref(request: Request, model_id: str) -> None:
    refs = request.app.state.__dict__.get("model_refs", {})
    for ref in [r for r, (_, info) in refs.items() if info.id == model_id]:
        refs.pop(ref, None)


def _check_serves(info: ModelInfo, ref: str, operation: str) -> None:
    if operation not in info.capabilities:
        raise ServiceError(
            "unsupported_operation",
            f"model {ref!r} ({info.kind}) does not serve {operation}; it serves "
            f"{', '.join(info.capabilities) or 'nothing'}",
            {"serves": info.capabilities},
        )


async def _read_rows(request: Request, info: ModelInfo) -> np.ndarray | list[Any]:
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type == NPY:
        try:
            return _npy(body)
        except (ValueError, OSError, OverflowError) as exc:
            raise ServiceError("validation_error", f"the body is not a .npy array: {exc}") from None
    if content_type == arrow_ipc.ARROW:
        try:
            return arrow_ipc.read_rows(body, max_columns=max(1, math.prod(info.input_shape)))
        except ValueError as exc:
            raise ServiceError("validation_error", f"the body is not usable rows: {exc}") from None
    try:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = json.loads(body)  # also reads NaN and Infinity, which are refused below
        if isinstance(parsed, dict) and parsed.keys() == {"inputs"} and parsed["inputs"]:
            inputs = parsed["inputs"]
            if isinstance(inputs, list):
                return inputs
        return Rows.model_validate(parsed).inputs  # not the usual shape: say what is wrong
    except ValueError as exc:  # json.JSONDecodeError and pydantic.ValidationError
        message = str(exc).splitlines()[0] if str(exc) else "invalid JSON"
        raise ServiceError(
            "validation_error", f'send {{"inputs": [[…], …]}} or an {NPY} body: {message}'
        ) from None


NPY_LENGTH_BYTES = {(1, 0): 2, (2, 0): 4, (3, 0): 4}  # format version: header-length field
NPY_MAX_HEADER = 10_000  # bytes; numpy's own limit
NPY_CACHED_HEADER = 1024  # bytes; longer headers are parsed each time


def _npy(body: bytes) -> np.ndarray:
    """A .npy body as an array over the body's own bytes (no copy for C-ordered arrays)."""
    if len(body) < 10 or body[:6] != b"\x93NUMPY":
        raise ValueError("it does not start with the .npy magic string")
    version = (body[6], body[7])
    width = NPY_LENGTH_BYTES.get(version)
    if width is None:
        raise ValueError(f"format version {version[0]}.{version[1]} is not one numpy writes")
    header_length = int.from_bytes(body[8 : 8 + width], "little")
    if header_length > NPY_MAX_HEADER:
        raise ValueError(f"a {header_length}-byte header (at most {NPY_MAX_HEADER})")
    offset = 8 + width + header_length
    head = body[:offset]
    parse = _npy_header if len(head) <= NPY_CACHED_HEADER else _npy_header.__wrapped__
    shape, fortran, dtype = parse(head)
    count = math.prod(shape)
    if len(body) - offset != count * dtype.itemsize:
        raise ValueError(f"the header announces {count} values of {dtype}; the data differs")
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


@functools.lru_cache(maxsize=256)
def _npy_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """A .npy header's (shape, Fortran order, dtype), checked. Cached: a client sends the same
    header again and again, and numpy parses it with `ast.literal_eval` (~15 µs)."""
    header = io.BytesIO(head)
    version = np.lib.format.read_magic(header)
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0  # 3.0 differs only in allowing utf-8 names
    )
    try:
        shape, fortran, dtype = read(header)
    except ValueError:
        raise
    except Exception as exc:  # numpy's parser lets SyntaxError, TokenError, IndexError… out
        raise ValueError(f"its header is not readable ({type(exc).__name__})") from None
    if dtype.kind not in "biuf" or dtype.itemsize == 0:
        raise ValueError(f"numbers are expected, not {dtype}")
    if len(shape) == 0:
        raise ValueError("a 0-d array holds no rows")
    return shape, fortran, dtype


def _rows(raw: np.ndarray | list[Any], info: ModelInfo, limit: int) -> np.ndarray:
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
    if x.ndim == 0 or len(x) == 0:
        raise ServiceError("validation_error", "send at least one row")
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
    if not np.isfinite(x).all():  # the per-row check only when one fails: it costs 10x
        bad = int(np.argmin(np.isfinite(x).reshape(len(x), -1).all(axis=1)))
        raise ServiceError("validation_error", f"row {bad} holds a non-finite number")
    return x


def _respond(request: Request, operation: str, answer: dict[str, Any]) -> Response:
    accept = request.headers.get("accept", "")
    if arrow_ipc.ARROW in accept:
        return Response(arrow_ipc.write_answer(answer), media_type=arrow_ipc.ARROW)
    if NPZ in accept:
        buffer = io.BytesIO()
        arrays = {k: np.asarray(v) for k, v in answer.items() if v is not None}
        np.savez(buffer, **arrays)
        return Response(buffer.getvalue(), media_type=NPZ)
    if NPY in accept:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(answer[PRIMARY[operation]]), allow_pickle=False)
        headers = {
            f"X-{k.replace('_', '-').title()}": str(to_json_array(v))
            for k, v in answer.items()
            if not isinstance(v, np.ndarray) and v is not None
        }
        return Response(buffer.getvalue(), media_type=NPY, headers=headers)
    body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY, default=to_json_array)
    return Response(body, media_type="application/json")


async def _infer(request: Request, cache: ModelCache, ref: str, operation: str) -> Response:
    state = request.app.state
    state.inferences_in_flight = getattr(state, "inferences_in_flight", 0) + 1
    try:
        return await _infer_rows(request, cache, ref, operation)
    finally:
        state.inferences_in_flight -= 1


async def _infer_rows(request: Request, cache: ModelCache, ref: str, operation: str) -> Response:
    settings = request.app.state.settings
    info = await _info(request, ref)
    _check_serves(info, ref, operation)
    x = _rows(await _read_rows(request, info), info, settings.max_inference_rows)
    started = time.perf_counter()
    try:
        if settings.batching:
            batcher = cache.ready_batcher(info, operation)
            if batcher is None:  # the model is not loaded yet: loading blocks
                batcher = await run_in_threadpool(
                    cache.batcher, info, operation, settings.batch_max_rows, settings.batch_max_wait
                )
            answer = await batcher.submit(x, alone=request.app.state.inferences_in_flight == 1)
        else:
            servable = await run_in_threadpool(cache.get, info)
            answer = await run_in_threadpool(servable.run, operation, x)
    except UnsupportedOperation as exc:
        raise ServiceError("unsupported_operation", str(exc)) from exc
    prom.observe_inference(info.kind, len(x), time.perf_counter() - started)
    return _respond(request, operation, answer)


@router.post("/{ref}/encode", openapi_extra=ROWS_BODY, responses=ANSWERS)
async def encode(ref: str, request: Request, cache: CacheDep) -> Response:
    """`{"latents": [[…]]}`; a VAE's latents are the means, with `"log_variances"`."""
    return await _infer(request, cache, ref, "encode")


@router.post("/{ref}/reconstruct", openapi_extra=ROWS_BODY, responses=ANSWERS)
async def reconstruct(ref: str, request: Request, cache: CacheDep) -> Response:
    """`{"reconstructions": [[…]]}` in the data's raw units."""
    return await _infer(request, cache, ref, "reconstruct")


@router.post("/{ref}/score", openapi_extra=ROWS_BODY, responses=ANSWERS)
async def score(ref: str, request: Request, cache: CacheDep) -> Response:
    """Anomaly scores, the calibrated threshold, and `is_anomaly` per row."""
    return await _infer(request, cache, ref, "score")


@router.post("/{ref}/predict", openapi_extra=ROWS_BODY, responses=ANSWERS)
async def predict(ref: str, request: Request, cache: CacheDep) -> Response:
    """Cluster ids, with probabilities or distances where the kind has them."""
    return await _infer(request, cache, ref, "predict")


@router.post("/{ref}/generate", responses=ANSWERS)
async def generate(ref: str, body: GenerateRequest, request: Request, cache: CacheDep) -> Response:
    """`{"samples": […]}` in the data's raw units; the same seed gives the same samples."""
    settings = request.app.state.settings
    if body.n > settings.max_generate:
        raise ServiceError(
            "validation_error", f"n = {body.n} is more than the limit of {settings.max_generate}"
        )
    info = await _info(request, ref)
    _check_serves(info, ref, "generate")
    servable = await run_in_threadpool(cache.get, info)
    options = body.model_dump(exclude_none=True)
    started = time.perf_counter()
    try:
        answer = await run_in_threadpool(lambda: servable.run("generate", None, **options))
    except UnsupportedOperation as exc:
        raise ServiceError("unsupported_operation", str(exc)) from exc
    except ValueError as exc:
        raise ServiceError("validation_error", str(exc)) from exc
    prom.observe_inference(info.kind, body.n, time.perf_counter() - started)
    return _respond(request, "generate", answer)


@router.get(
    "/{ref}/{picture}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "a PNG image"}},
)
async def picture(ref: str, picture: str, request: Request, cache: CacheDep) -> Response:
    """One of the pictures the model's kind draws (its `pictures` list: samples, embedding, …)."""

    def lookup() -> tuple[ModelInfo, list[str]]:
        with request.app.state.sessions() as session:
            row = model_repo.resolve(session, ref)
            return ModelInfo.of(row), list(row.pictures or [])

    info, available = await run_in_threadpool(lookup)
    if picture not in available:
        raise ServiceError(
            "not_found",
            f"model {ref!r} has no picture {picture!r}; it has {', '.join(available) or 'none'}",
            {"pictures": available},
        )
    servable = await run_in_threadpool(cache.get, info)
    draw = getattr(servable, "picture", None)
    if draw is None:
        raise ServiceError("not_found", f"model {ref!r} draws no pictures")
    return Response(await run_in_threadpool(draw, picture), media_type="image/png")
