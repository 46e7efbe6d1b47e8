"""The submit-time parameter estimates (`JobSpec.size_estimate`, pure arithmetic) equal the
weights of the networks the kinds build, for each network kind's example and a few variants."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ml.core.registry import get_kind

Counter = Callable[[Any, tuple[int, ...]], int]


def _variables(variables: Any) -> int:
    unique = {id(v): v for v in variables}
    return sum(int(np.prod(v.shape)) for v in unique.values())


def _autoencoding(spec: Any, shape: tuple[int, ...]) -> int:
    objective = spec.params.objective(shape)
    return _variables([*objective.trainable_variables, *objective.saved_variables.values()])


def _gan(spec: Any, shape: tuple[int, ...]) -> int:
    from ml.generative.gan_model import Players

    players = Players(spec.params, shape, tanh=True)
    return int(players.generator.count_params() + players.discriminator.count_params())


def _diffusion(spec: Any, shape: tuple[int, ...]) -> int:
    from ml.generative.diffusion_networks import build_eps_network

    return int(build_eps_network(spec.params, shape).count_params())


def _tsne(spec: Any, shape: tuple[int, ...]) -> int:
    from ml.reduction.tsne_tf import TsneObjective

    return _variables(TsneObjective(spec.params, math.prod(shape)).trainable_variables)


def _deep(spec: Any, shape: tuple[int, ...]) -> int:
    from ml.anomaly.autoencoder import AutoencoderParams

    p = spec.params
    dense = {"latent_dim": p.latent_dim, "hidden": p.hidden, "architecture": "dense"}
    autoencoder = AutoencoderParams.model_validate(dense).objective((math.prod(shape),))
    return _variables(autoencoder.trainable_variables) + p.n_clusters * p.latent_dim


COUNTERS: dict[str, Counter] = {
    "autoencoder": _autoencoding,
    "vae": _autoencoding,
    "gan": _gan,
    "diffusion": _diffusion,
    "tsne": _tsne,
    "dec": _deep,
    "dcn": _deep,
}
TABLE, IMAGE, SMALL_IMAGE = (30,), (28, 28, 1), (8, 8, 3)
# (kind, params over the example's, row shape)
CASES: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    *[(kind, {}, TABLE) for kind in COUNTERS],
    *[(kind, {}, (64,)) for kind in COUNTERS],
    ("autoencoder", {"hidden": []}, TABLE),
    ("autoencoder", {"hidden": [64, 16], "architecture": "conv"}, IMAGE),
    ("autoencoder", {"hidden": [7], "latent_dim": 3}, SMALL_IMAGE),
    ("autoencoder", {"ensemble_size": 3}, TABLE),
    ("autoencoder", {"ensemble_size": 2, "architecture": "conv"}, SMALL_IMAGE),
    ("vae", {"likelihood": "gaussian", "architecture": "auto"}, IMAGE),
    ("vae", {"hidden": [50, 20, 10]}, TABLE),
    ("gan", {"architecture": "auto"}, SMALL_IMAGE),
    ("gan", {"generator_hidden": [5], "discriminator_hidden": [9, 3], "latent_dim": 2}, TABLE),
    ("diffusion", {"hidden": None}, TABLE),
    ("diffusion", {"hidden": [32, 64, 16]}, TABLE),
    ("diffusion", {"hidden": None, "architecture": "auto"}, IMAGE),
    ("diffusion", {"hidden": [8, 16, 24], "architecture": "conv"}, SMALL_IMAGE),
    ("tsne", {"hidden": [100]}, TABLE),
    ("dec", {"hidden": [500, 500, 2000], "n_clusters": 3}, IMAGE),
    ("dcn", {"hidden": [], "latent_dim": 2}, TABLE),
]


@pytest.mark.parametrize(("kind", "params", "shape"), CASES)
def test_estimated_parameters_equal_the_built_networks(
    kind: str, params: dict[str, Any], shape: tuple[int, ...]
) -> None:
    spec_type = get_kind(kind).spec
    example = spec_type.example
    spec = spec_type.model_validate({**example, "params": {**example["params"], **params}})
    estimate = spec.size_estimate(1000, shape)
    assert estimate is not None
    assert estimate.total_parameters == COUNTERS[kind](spec, shape), estimate.parameters
    assert estimate.total_memory > estimate.total_parameters * 4
