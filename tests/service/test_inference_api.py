"""Model operations over HTTP: a model trained by a job (run inline), then served."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ml.core.datasets import load_builtin
from service.db.tenancy import EVERYONE
from tests.conftest import submit

QUICK = {"epochs": 2, "batch_size": 32, "seed": 0}


def train(client: TestClient, kind: str, **extra: Any) -> dict[str, Any]:
    spec = {"kind": kind, "dataset": "builtin:breast_cancer", "training": QUICK, **extra}
    job = submit(client, spec)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["model_id"]
    model = client.get(f"/v1/models/{done['model_id']}").json()
    return model


@pytest.fixture
def rows() -> list[list[float]]:
    return load_builtin("breast_cancer").x[:4].tolist()


def test_autoencoder_encodes_reconstructs_and_scores(
    client: TestClient, rows: list[list[float]]
) -> None:
    model = train(client, "autoencoder", name="cancer-ae")
    assert model["capabilities"] == ["encode", "reconstruct", "score"]
    assert model["input_shape"] == [30]
    assert "roc_auc" in model["evaluation"]
    for ref in (model["id"], "cancer-ae", "cancer-ae@1"):
        scored = client.post(f"/v1/models/{ref}/score", json={"inputs": rows})
        assert scored.status_code == 200, scored.text
    body = scored.json()
    assert len(body["scores"]) == 4
    assert body["threshold"] == model["calibration"]["threshold"]
    assert body["is_anomaly"] == [s > body["threshold"] for s in body["scores"]]
    latents = client.post("/v1/models/cancer-ae/encode", json={"inputs": rows}).json()
    assert np.asarray(latents["latents"]).shape[0] == 4
    recon = client.post("/v1/models/cancer-ae/reconstruct", json={"inputs": rows}).json()
    assert np.asarray(recon["reconstructions"]).shape == (4, 30)


def test_vae_serves_log_variances_and_seeded_samples(client: TestClient, rows: list) -> None:
    model = train(client, "vae", name="cancer-vae")
    encoded = client.post("/v1/models/cancer-vae/encode", json={"inputs": rows}).json()
    assert set(encoded) == {"latents", "log_variances"}
    first = client.post("/v1/models/cancer-vae/generate", json={"n": 3, "seed": 11}).json()
    again = client.post("/v1/models/cancer-vae/generate", json={"n": 3, "seed": 11}).json()
    assert first == again and np.asarray(first["samples"]).shape == (3, 30)
    assert "generate" in model["capabilities"]


def test_bad_inputs_get_clear_4xx(client: TestClient, rows: list) -> None:
    train(client, "autoencoder", name="strict")
    url = "/v1/models/strict/score"
    short = client.post(url, json={"inputs": [[1.0, 2.0]]})
    assert short.status_code == 422
    assert "[30]" in short.json()["error"]["message"]
    assert short.json()["error"]["details"]["expected_shape"] == [30]
    nan_row = '{"inputs": [[' + ", ".join(["NaN"] + ["1.0"] * 29) + "]]}"
    response = client.post(url, content=nan_row, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "non-finite" in response.json()["error"]["message"]
    with_inf = np.ones((3, 30), dtype=np.float32)
    with_inf[2, 7] = np.inf
    response = client.post(
        url, content=npy(with_inf), headers={"content-type": "application/x-npy"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "row 2 holds a non-finite number"
    ragged = client.post(url, json={"inputs": [rows[0], rows[1][:10]]})
    assert ragged.status_code == 422
    assert client.post(url, json={"inputs": []}).status_code == 422
    assert client.post(url, json={"inputs": [["a"] * 30]}).status_code == 422
    generate = client.post("/v1/models/strict/generate", json={"n": 2})
    assert generate.status_code == 409
    error = generate.json()["error"]
    assert error["code"] == "unsupported_operation"
    assert "encode, reconstruct, score" in error["message"]
    assert client.post("/v1/models/nope/score", json={"inputs": rows}).status_code == 404
    assert client.post("/v1/models/strict@7/score", json={"inputs": rows}).status_code == 404


def test_row_and_sample_limits(client: TestClient, rows: list, settings) -> None:  # type: ignore[no-untyped-def]
    train(client, "vae", name="limited")
    client.app.state.settings = settings.model_copy(  # type: ignore[attr-defined]
        update={"max_inference_rows": 3, "max_generate": 5}
    )
    many = client.post("/v1/models/limited/score", json={"inputs": rows})
    assert many.status_code == 422 and "limit of 3" in many.json()["error"]["message"]
    big = client.post("/v1/models/limited/generate", json={"n": 6})
    assert big.status_code == 422 and "limit of 5" in big.json()["error"]["message"]


def test_deleted_model_is_no_longer_served(client: TestClient, rows: list) -> None:
    train(client, "autoencoder", name="gone")
    assert client.post("/v1/models/gone/score", json={"inputs": rows}).status_code == 200
    cache = client.app.state.model_cache  # type: ignore[attr-defined]
    assert len(cache.loaded) == 1
    assert client.delete("/v1/models/gone").status_code == 204
    assert cache.loaded == []
    assert client.post("/v1/models/gone/score", json={"inputs": rows}).status_code == 404


def test_image_models_take_nested_or_flat_rows(client: TestClient) -> None:
    spec = {
        "kind": "autoencoder",
        "name": "digits-ae",
        "dataset": "builtin:digits",
        "preprocessing": {"scale": "minmax"},
        "training": {**QUICK, "epochs": 1},
    }
    job = submit(client, spec)
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    image = load_builtin("digits").x[:2]
    nested = client.post("/v1/models/digits-ae/reconstruct", json={"inputs": image.tolist()})
    flat = client.post(
        "/v1/models/digits-ae/reconstruct", json={"inputs": image.reshape(2, -1).tolist()}
    )
    assert nested.status_code == flat.status_code == 200
    assert nested.json() == flat.json()
    assert np.asarray(nested.json()["reconstructions"]).shape == (2, 8, 8, 1)


def test_model_cache_evicts_by_count(client: TestClient, rows: list, settings) -> None:  # type: ignore[no-untyped-def]
    from service.inference import ModelCache
    from service.storage import ArtifactStore

    for name in ("one", "two", "three"):
        train(client, "autoencoder", name=name)
    small = settings.model_copy(update={"model_cache_models": 2})
    cache = ModelCache(small, ArtifactStore.from_settings(small))
    client.app.state.model_cache = cache  # type: ignore[attr-defined]
    for name in ("one", "two", "three"):
        assert client.post(f"/v1/models/{name}/score", json={"inputs": rows}).status_code == 200
    assert len(cache.loaded) == 2


def test_model_cache_evicts_by_size_and_frees_what_it_evicts(client: TestClient, settings) -> None:  # type: ignore[no-untyped-def]
    """A loaded Keras model is a reference cycle: unless the cache collects after evicting,
    evicted models stay in memory until Python's next full collection (bench/memory.py)."""
    import dataclasses
    import gc
    import weakref

    from service.inference import ModelCache, ModelInfo
    from service.storage import ArtifactStore

    one, two = (train(client, "autoencoder", name=name) for name in ("one", "two"))
    infos = [
        ModelInfo(**{f.name: m[f.name] for f in dataclasses.fields(ModelInfo)}) for m in (one, two)
    ]
    tight = settings.model_copy(update={"model_cache_bytes": 1})  # by size: one model at a time
    cache = ModelCache(tight, ArtifactStore.from_settings(tight))
    gc.disable()  # no collection by chance: only the cache's own may free the evicted model
    try:
        evicted = weakref.ref(cache.get(infos[0]))
        cache.get(infos[1])
        assert cache.loaded == [f"{two['id']}:{two['sha256']}"]
        assert evicted() is None
        # The loaded model is frozen out of the collector's way: a full collection walks fewer
        # objects than were frozen (without the freeze it walks them all, a ~200 ms pause).
        assert gc.get_freeze_count() > len(gc.get_objects())
        kept = weakref.ref(cache.get(infos[1]))
        cache.discard(two["id"])  # a deleted model is unfrozen and freed too
        assert kept() is None
    finally:
        gc.enable()


def test_a_model_that_cannot_be_fetched_evicts_nothing(client: TestClient, settings) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from service.inference import ModelCache, ModelInfo
    from service.storage import ArtifactStore

    one = train(client, "autoencoder", name="one")
    info = ModelInfo(**{f.name: one[f.name] for f in dataclasses.fields(ModelInfo)})
    tight = settings.model_copy(update={"model_cache_models": 1})
    cache = ModelCache(tight, ArtifactStore.from_settings(tight))
    cache.get(info)
    missing = {name: {**entry, "key": entry["key"] + ".gone"} for name, entry in info.files.items()}
    broken = dataclasses.replace(info, id="broken", files=missing)
    with pytest.raises(Exception):  # noqa: B017  (whatever the store raises)
        cache.get(broken)
    assert cache.loaded == [f"{info.id}:{info.sha256}"]


def npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_numpy_bodies_and_answers(client: TestClient) -> None:
    import io

    train(client, "autoencoder", name="binary")
    x = load_builtin("breast_cancer").x[:50].astype(np.float32)
    as_json = client.post("/v1/models/binary/score", json={"inputs": x.tolist()}).json()
    response = client.post(
        "/v1/models/binary/score",
        content=npy(x),
        headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
    )
    assert response.headers["content-type"] == "application/x-npy"
    scores = np.load(io.BytesIO(response.content))
    np.testing.assert_allclose(scores, as_json["scores"], rtol=1e-6)
    assert float(response.headers["X-Threshold"]) == pytest.approx(as_json["threshold"])
    bundle = client.post(
        "/v1/models/binary/score",
        content=npy(x),
        headers={"content-type": "application/x-npy", "accept": "application/x-npz"},
    )
    arrays = np.load(io.BytesIO(bundle.content))
    assert set(arrays.files) == {"scores", "threshold", "is_anomaly"}
    bad = client.post(
        "/v1/models/binary/score", content=b"junk", headers={"content-type": "application/x-npy"}
    )
    assert bad.status_code == 422 and "npy" in bad.json()["error"]["message"]
    # Headers are parsed once per distinct header: the same header with other data answers
    # for that data, and a body cut short is refused.
    other = client.post(
        "/v1/models/binary/score",
        content=npy(x[::-1].copy()),
        headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
    )
    np.testing.assert_allclose(np.load(io.BytesIO(other.content)), scores[::-1], rtol=1e-6)
    for cut in (npy(x)[:-4], npy(x)[:60]):
        short = client.post(
            "/v1/models/binary/score", content=cut, headers={"content-type": "application/x-npy"}
        )
        assert short.status_code == 422, len(cut)
    pickled = np.array([object()], dtype=object)
    evil = io.BytesIO()
    np.save(evil, pickled, allow_pickle=True)
    refused = client.post(
        "/v1/models/binary/score",
        content=evil.getvalue(),
        headers={"content-type": "application/x-npy"},
    )
    assert refused.status_code == 422


def test_micro_batches_answer_like_single_requests() -> None:
    import asyncio

    from service.batching import Batcher

    calls: list[int] = []

    def compute(x: np.ndarray) -> dict[str, Any]:
        calls.append(len(x))
        return {"scores": x.sum(axis=1), "threshold": 1.5}

    async def scenario() -> list[dict[str, Any]]:
        batcher = Batcher(compute, max_rows=64, max_wait_s=0.005)
        rows = [np.full((i % 3 + 1, 2), float(i)) for i in range(20)]
        answers = await asyncio.gather(*(batcher.submit(r) for r in rows))
        for r, answer in zip(rows, answers, strict=True):
            np.testing.assert_array_equal(answer["scores"], r.sum(axis=1))
            assert answer["threshold"] == 1.5
        return answers

    asyncio.run(scenario())
    assert len(calls) < 20  # requests were combined
    assert sum(calls) == sum(i % 3 + 1 for i in range(20))


def test_quick_lone_calls_run_on_the_loop_and_slow_ones_in_a_thread() -> None:
    import asyncio
    import threading
    import time

    from service.batching import INLINE_BELOW_S, Batcher

    threads: list[str] = []

    def quick(x: np.ndarray) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return {"scores": x.sum(axis=1)}

    def slow(x: np.ndarray) -> dict[str, Any]:
        time.sleep(2 * INLINE_BELOW_S)
        return quick(x)

    async def scenario(compute: Any) -> str:
        loop_thread = threading.current_thread().name
        batcher = Batcher(compute, max_rows=64, max_wait_s=0.0)
        for i in range(3):  # the first call is timed in a thread; later ones may run inline
            answer = await batcher.submit(np.full((1, 2), float(i)), alone=True)
            np.testing.assert_array_equal(answer["scores"], [2.0 * i])
        # Concurrent requests still batch (in a thread), whatever the last call took.
        before = len(threads)
        answers = await asyncio.gather(*(batcher.submit(np.ones((1, 2))) for _ in range(8)))
        assert all(a["scores"][0] == 2.0 for a in answers)
        assert loop_thread not in threads[before:] and len(threads) - before < 8
        return loop_thread

    threads.clear()
    loop_thread = asyncio.run(scenario(quick))
    assert threads[0] != loop_thread and threads[1:3] == [loop_thread, loop_thread]

    async def more_rows_than_last_time() -> str:
        batcher = Batcher(quick, max_rows=64, max_wait_s=0.0)
        await batcher.submit(np.ones((1, 2)), alone=True)
        await batcher.submit(np.ones((1, 2)), alone=True)
        await batcher.submit(np.ones((40, 2)), alone=True)  # unmeasured size: in a thread
        return threading.current_thread().name

    threads.clear()
    loop_thread = asyncio.run(more_rows_than_last_time())
    assert threads[1] == loop_thread and threads[2] != loop_thread
    threads.clear()
    loop_thread = asyncio.run(scenario(slow))
    assert loop_thread not in threads


def test_npy_bodies_that_hold_no_numeric_rows_are_422(client: TestClient) -> None:
    train(client, "autoencoder", name="one")
    for body in (np.float32(1.0), np.zeros((10, 3), dtype="V0"), np.array([["a"] * 30])):
        response = client.post(
            "/v1/models/one/score",
            content=npy(np.asarray(body)),
            headers={"content-type": "application/x-npy"},
        )
        assert response.status_code == 422, body
        assert "not a .npy array" in response.json()["error"]["message"]


def _npy_with(header: bytes, version: tuple[int, int] = (1, 0), data: bytes = b"") -> bytes:
    width = 2 if version == (1, 0) else 4
    return b"\x93NUMPY" + bytes(version) + len(header).to_bytes(width, "little") + header + data


def test_npy_format_versions_and_malformed_headers(client: TestClient) -> None:
    """Versions 2.0 and 3.0 (4-byte header length) answer like 1.0; every malformed header is
    a 422 naming the problem, never a 500."""
    train(client, "autoencoder", name="versions")
    url = "/v1/models/versions/score"
    x = load_builtin("breast_cancer").x[:5].astype(np.float32)
    plain = npy(x)
    header = plain[10 : 10 + int.from_bytes(plain[8:10], "little")]
    expected = client.post(url, json={"inputs": x.tolist()}).json()["scores"]
    for version in ((2, 0), (3, 0)):
        body = _npy_with(header, version, x.tobytes())
        answer = client.post(url, content=body, headers={"content-type": "application/x-npy"})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["scores"], expected, rtol=1e-6)
    shape = b"'fortran_order': False, 'shape': (1,), }"
    for body, says in (
        (_npy_with(header, (1, 1), x.tobytes()), "version 1.1"),
        (_npy_with(header, (4, 0), x.tobytes()), "version 4.0"),
        (_npy_with(b"{"), "not readable"),
        (_npy_with(b"'''"), "not readable"),
        (_npy_with(b"  1\n 1"), "not readable"),
        (_npy_with(b"{'descr': (), " + shape), "not readable"),
        (_npy_with(b" " * 20_000, (2, 0)), "20000-byte header"),
        (_npy_with(b" " * 2000 + b"\n", (2, 0)), "header"),  # long: parsed without the cache
        (b"\x93NUMPY", "magic"),
    ):
        response = client.post(url, content=body, headers={"content-type": "application/x-npy"})
        assert response.status_code == 422, (body[:40], response.text)
        message = response.json()["error"]["message"]
        assert "not a .npy array" in message and says in message, message


ARROW = "application/vnd.apache.arrow.stream"


def arrow(table: Any, compression: str | None = None) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def test_arrow_bodies_and_answers(client: TestClient) -> None:
    """Rows as feature columns, as a fixed-size list column, or both, answer like JSON rows;
    answers come back as columns with the threshold in the schema's metadata."""
    import json

    import pyarrow as pa

    train(client, "autoencoder", name="arrowed")
    url = "/v1/models/arrowed/score"
    x = load_builtin("breast_cancer").x[:20].astype(np.float32)
    expected = client.post(url, json={"inputs": x.tolist()}).json()
    as_columns = pa.table({f"f{i}": x[:, i] for i in range(30)})
    as_list = pa.table({"row": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 30)})
    mixed = pa.table(
        {
            **{f"f{i}": x[:, i].astype(np.float64) for i in range(10)},
            "rest": pa.FixedSizeListArray.from_arrays(pa.array(x[:, 10:].reshape(-1)), 20),
        }
    )
    for table in (as_columns, as_list, mixed):
        response = client.post(
            url, content=arrow(table), headers={"content-type": ARROW, "accept": ARROW}
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == ARROW
        answer = pa.ipc.open_stream(response.content).read_all()
        np.testing.assert_allclose(answer["scores"].to_numpy(), expected["scores"], rtol=1e-6)
        assert answer["is_anomaly"].to_pylist() == expected["is_anomaly"]
        threshold = json.loads(answer.schema.metadata[b"threshold"])
        assert threshold == pytest.approx(expected["threshold"])
    latents = client.post(
        "/v1/models/arrowed/encode",
        content=arrow(as_list),
        headers={"content-type": ARROW, "accept": ARROW},
    )
    table = pa.ipc.open_stream(latents.content).read_all()
    as_json = client.post("/v1/models/arrowed/encode", json={"inputs": x.tolist()}).json()
    width = len(as_json["latents"][0])
    assert json.loads(table.schema.field("latents").metadata[b"shape"]) == [width]
    flat = table["latents"].combine_chunks().flatten().to_numpy()
    np.testing.assert_allclose(flat.reshape(20, width), as_json["latents"], rtol=1e-5, atol=1e-6)


def test_arrow_bodies_that_are_not_rows_are_422(client: TestClient) -> None:
    import pyarrow as pa

    train(client, "autoencoder", name="strict-arrow")
    strings = pa.FixedSizeListArray.from_arrays(pa.array(["a"] * 30), 30)
    ones = pa.table({f"f{i}": np.ones(3) for i in range(30)})
    flags = pa.table({f"f{i}": [True, False] for i in range(30)})  # booleans are numbers
    url = "/v1/models/strict-arrow/score"
    accepted = client.post(url, content=arrow(flags), headers={"content-type": ARROW})
    assert accepted.status_code == 200, accepted.text
    for body, says in (
        (arrow(ones, "zstd"), "compressed Arrow streams are not accepted"),
        (arrow(ones, "lz4"), "compressed Arrow streams are not accepted"),
        (arrow(ones.append_column("extra", pa.array(np.ones(3)))), "31 columns, more than the 30"),
        (arrow(pa.table({"a": ["x", "y"]})), "column 'a' is string"),
        (arrow(pa.table({"a": [1.0, None]})), "column 'a' has 1 missing values"),
        (arrow(pa.table({"a": [1.0, 2.0]})), "each row must have shape [30]"),
        (arrow(pa.table({"a": strings})), "column 'a' holds lists of string"),
        (arrow(pa.table({"a": pa.array([], pa.float32())})), "send at least one row"),
        (arrow(pa.table({})), "the table has no columns"),
        (b"junk", "not a readable Arrow IPC stream"),
    ):
        response = client.post(url, content=body, headers={"content-type": ARROW})
        assert response.status_code == 422, (says, response.text)
        assert says in response.json()["error"]["message"], response.text


def test_long_work_runs_in_chunks_that_answer_like_one_call(client: TestClient, rows: list) -> None:
    """generate beyond one chunk draws every chunk from one generator: a VAE gives the very
    samples of one call."""
    from service import chunks

    model = train(client, "vae", name="chunky")
    client.post("/v1/models/chunky/encode", json={"inputs": rows})  # loads the model
    cache = client.app.state.model_cache  # type: ignore[attr-defined]
    servable = cache.get(cache.resolve(client.app.state.sessions, "chunky", scope=EVERYONE))  # type: ignore[attr-defined]
    n = 2 * chunks.GENERATE_CHUNK + 76
    whole = servable.run("generate", None, n=n, seed=5)["samples"]
    sizes: list[int] = []
    run = servable.run
    servable.run = lambda op, x, **o: sizes.append(o.get("n", 0)) or run(op, x, **o)
    try:
        answer = client.post("/v1/models/chunky/generate", json={"n": n, "seed": 5})
    finally:
        servable.run = run
    assert answer.status_code == 200, answer.text
    assert sizes == [chunks.GENERATE_CHUNK, chunks.GENERATE_CHUNK, 76]
    np.testing.assert_allclose(np.asarray(answer.json()["samples"]), whole, rtol=1e-6)
    assert model["input_shape"] == [30]
