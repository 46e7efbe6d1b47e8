"""`resources.devices` (data-parallel MirroredStrategy) and `resources.mixed_precision`.

Several devices are tested on CPU split into logical devices, which has to happen before
TensorFlow starts: those runs are in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from ml.core.datasets import load_builtin
from ml.core.registry import get_kind
from ml.core.reporting import MemoryReporter, RunContext
from tests.conftest import RecordingPublisher

ROOT = Path(__file__).resolve().parents[2]
TRAINING = {"epochs": 3, "batch_size": 64, "seed": 0, "telemetry": {"every_steps": 3}}
# Series that one device and several compute from the same numbers in another summation order.
SAME_SERIES = ("loss", "val_loss", "internal_energy", "batch_sqnorm_scaled")

RUN_BOTH = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path
    from ml.core.datasets import load_builtin
    from ml.core.registry import get_kind
    from ml.core.reporting import MemoryReporter, RunContext

    kind, training = sys.argv[1], json.loads(sys.argv[2])
    data = load_builtin("breast_cancer")
    runs = {}
    for devices in (2, 1):  # two first: the CPU is split before TensorFlow starts
        tmp = Path(tempfile.mkdtemp())
        ctx = RunContext(workdir=tmp / "w", checkpoint_dir=tmp / "c", dataset=data)
        ctx.workdir.mkdir()
        ctx.checkpoint_dir.mkdir()
        k = get_kind(kind)
        spec = k.spec.model_validate({
            "kind": kind, "dataset": "builtin:breast_cancer", "training": training,
            "resources": {"devices": devices},
        })
        reporter = MemoryReporter()
        outcome = k.run(spec, reporter, ctx)
        runs[devices] = {
            "device": outcome.device,
            "points": {n: {str(s): v for s, v in p.items()} for n, p in reporter.points.items()},
        }
    print("RESULT " + json.dumps(runs))
    """
)


def both_ways(kind: str, training: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", RUN_BOTH, kind, json.dumps(training)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    runs = json.loads(line.removeprefix("RESULT "))
    return {int(k): v for k, v in runs.items()}


@pytest.mark.slow
def test_two_devices_follow_the_loss_curve_of_one() -> None:
    runs = both_ways("autoencoder", TRAINING)
    assert runs[2]["device"] == "CPU:0,CPU:1"
    assert runs[1]["device"] == "CPU:0"
    one, two = runs[1]["points"], runs[2]["points"]
    assert len(one["loss"]) == TRAINING["epochs"]
    assert one["internal_energy"].keys() == two["internal_energy"].keys()
    for name in ("loss", "val_loss", "internal_energy"):
        steps = sorted(one[name], key=int)
        a = np.array([one[name][s] for s in steps])
        b = np.array([two[name][s] for s in steps])
        # float32 sums in another order: agreement to a few ulps of the accumulated values.
        np.testing.assert_allclose(b, a, rtol=2e-5, err_msg=name)
    # Training moved: the curves being equal is not the trivial equality of two frozen models.
    assert one["loss"][max(one["loss"], key=int)] < one["loss"][min(one["loss"], key=int)]


def train_in_process(kind: str, resources: dict[str, Any], tmp: Path) -> tuple[Any, Any]:
    data = load_builtin("breast_cancer")
    ctx = RunContext(workdir=tmp / "w", checkpoint_dir=tmp / "c", dataset=data)
    ctx.workdir.mkdir(parents=True)
    ctx.checkpoint_dir.mkdir(parents=True)
    k = get_kind(kind)
    spec = k.spec.model_validate(
        {
            "kind": kind,
            "dataset": "builtin:breast_cancer",
            "training": TRAINING,
            "resources": resources,
        }
    )
    reporter = MemoryReporter()
    return k.run(spec, reporter, ctx), reporter


def test_mixed_precision_trains_close_to_float32_and_restores_the_policy(tmp_path: Path) -> None:
    import keras

    _, full_points = train_in_process("autoencoder", {}, tmp_path / "full")
    mixed, mixed_points = train_in_process(
        "autoencoder", {"mixed_precision": True}, tmp_path / "mixed"
    )
    assert keras.config.dtype_policy().name == "float32"
    a = np.array(list(full_points.points["loss"].values()))
    b = np.array(list(mixed_points.points["loss"].values()))
    assert np.all(np.isfinite(b))
    # bfloat16 keeps 8 bits of mantissa: a relative error of 2^-8 per operation, far less after
    # the float32 accumulations, so the curves agree to a few percent but are not identical.
    np.testing.assert_allclose(b, a, rtol=0.03)
    assert not np.array_equal(a, b)
    model = mixed.model
    assert model is not None
    encoder = keras.saving.load_model(model.files["encoder"], compile=False, safe_mode=True)
    policies = {layer.dtype_policy.name for layer in encoder.layers[1:]}
    assert policies == {"mixed_bfloat16", "float32"}  # hidden layers, and the latent head
    meta = {
        "input_shape": model.input_shape,
        "preprocessing": model.preprocessing,
        "calibration": model.calibration,
        "capabilities": model.capabilities,
    }
    served = get_kind("autoencoder").load(model.files, meta)  # type: ignore[misc]
    rows = load_builtin("breast_cancer").x[:5]
    scores = served.run("score", rows)["scores"]
    assert np.all(np.isfinite(scores))


@pytest.mark.parametrize(
    ("kind", "resources"),
    [("kmeans", {"devices": 2}), ("pca", {"mixed_precision": True}), ("langevin", {"devices": 4})],
)
def test_kinds_outside_the_training_loop_refuse_devices(kind: str, resources: dict) -> None:
    spec = get_kind(kind).spec
    with pytest.raises(ValidationError, match="one device"):
        spec.model_validate({"kind": kind, "dataset": "builtin:digits", "resources": resources})


def test_devices_are_bounded() -> None:
    spec = get_kind("autoencoder").spec
    for devices in (0, 17):
        with pytest.raises(ValidationError, match="devices"):
            spec.model_validate(
                {
                    "kind": "autoencoder",
                    "dataset": "builtin:digits",
                    "resources": {"devices": devices},
                }
            )
    ok = spec.model_validate(
        {"kind": "autoencoder", "dataset": "builtin:digits", "resources": {"devices": 4}}
    )
    assert ok.resources.devices == 4


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher(run_inline=False)  # accepting is the point here, not training


def test_the_api_refuses_devices_for_a_kind_on_one_device(client: Any) -> None:
    spec = {"kind": "kmeans", "dataset": "builtin:digits", "resources": {"devices": 2}}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422
    assert "resources.devices must be 1" in response.json()["error"]["message"]
    spec = {"kind": "autoencoder", "dataset": "builtin:digits", "resources": {"devices": 2}}
    assert client.post("/v1/jobs", json=spec).status_code == 202
