"""Dimensionality reduction and the remaining clustering kinds on `digits`, each next to its
scikit-learn counterpart: wall time and quality — explained variance for `pca` (and its error
against scikit-learn's), trustworthiness for `tsne` (5 neighbours, over the same rows), ARI / NMI
against the digit labels for `hierarchical` and `dcn` (whose counterpart is KMeans on the same
scaled rows). A second table measures the randomised PCA's accuracy against the exact SVD.

Every method sees the same rows, scaled as thermoml scales them. Seconds are wall time of the
whole job (TensorFlow imported beforehand; graph tracing included, as a job pays it); for `tsne`
the job's own scikit-learn comparison is taken out of its time and reported as scikit-learn's.

    python bench/reduction.py [--quick] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from bench.common import table, write_report
from ml.core.datasets import Dataset, load_builtin
from ml.core.preprocessing import Scaler
from ml.core.registry import get_kind
from ml.core.reporting import MemoryReporter, ModelOutcome, RunContext
from ml.core.spec import ScaleName

LINKAGES = ("ward", "average", "complete", "single")


def run_kind(kind: str, spec: dict[str, Any], data: Dataset) -> tuple[ModelOutcome, float]:
    k = get_kind(kind)
    parsed = k.spec.model_validate({"kind": kind, "dataset": f"builtin:{data.name}", **spec})
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(Path(tmp) / "w", Path(tmp) / "c", data)
        ctx.workdir.mkdir()
        ctx.checkpoint_dir.mkdir()
        started = time.perf_counter()
        outcome = k.run(parsed, MemoryReporter(), ctx)
        seconds = time.perf_counter() - started
    assert outcome.model is not None
    return outcome.model, seconds


def scaled(data: Dataset, scale: ScaleName) -> np.ndarray:
    x = Scaler(scale).fit(data.x).transform(data.x.astype(np.float64))
    return x.reshape(data.rows, -1)


def labels_scores(truth: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "ari": float(adjusted_rand_score(truth, labels)),
        "nmi": float(normalized_mutual_info_score(truth, labels)),
    }


def timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def bench_pca(data: Dataset, seed: int) -> list[dict[str, Any]]:
    """Ten components, exact and randomised, each against scikit-learn's exact explained
    variances (the truth both are measured against)."""
    x = scaled(data, "standard")
    exact = PCA(10, svd_solver="full").fit(x).explained_variance_
    rows = []

    def row(method: str, setting: str, variance: np.ndarray, total: float, seconds: float) -> None:
        error = float(np.max(np.abs(variance / exact - 1)))
        rows.append(
            {
                "kind": "pca",
                "setting": f"10 components, {setting}",
                "method": method,
                "quality": f"evr {variance.sum() / total:.4f}",
                "seconds": seconds,
                "vs_sklearn": f"ev rel. error {error:.1e}",
            }
        )

    total = float(np.sum(np.var(x, axis=0, ddof=1)))
    for method, solver in (("svd", "full"), ("randomized", "randomized")):
        spec = {"params": {"n_components": 10, "method": method, "validation_split": 0.0}}
        model, seconds = run_kind("pca", spec, data)
        ours = np.array(model.evaluation["explained_variance"])
        row("thermoml", method, ours, total, seconds)
        reference, theirs = timed(
            lambda s=solver: PCA(10, svd_solver=s, random_state=seed).fit(x)  # type: ignore[misc]
        )
        row(f"sklearn PCA ({solver})", method, reference.explained_variance_, total, theirs)
    return rows


def bench_tsne(data: Dataset, seed: int, quick: bool) -> list[dict[str, Any]]:
    rows_used = 400 if quick else data.rows
    spec: dict[str, Any] = {
        "params": {"evaluation_rows": rows_used, "compare_sklearn": True},
        "training": {"validation_split": 0.0, "seed": seed},
    }
    if quick:  # a smoke run: the numbers mean little, and no telemetry graphs are traced
        spec["params"]["exaggeration_epochs"] = 1
        spec["training"].update(epochs=3, telemetry={"every_steps": 10**6})
    model, seconds = run_kind("tsne", spec, data)
    evaluation = model.evaluation
    x = scaled(data, "standard")[:rows_used] if quick else scaled(data, "standard")
    pca_2d, pca_seconds = timed(lambda: PCA(2).fit_transform(x))
    setting = f"2-D, perplexity 30, {evaluation['trustworthiness_rows']} rows"
    return [
        {
            "kind": "tsne",
            "setting": setting,
            "method": "thermoml (parametric)",
            "quality": f"trust {evaluation['trustworthiness']:.4f}",
            "seconds": seconds - evaluation["sklearn_seconds"],
            "vs_sklearn": f"KL {evaluation['kl_divergence']:.3f} (per batch)",
        },
        {
            "kind": "tsne",
            "setting": setting,
            "method": "sklearn TSNE",
            "quality": f"trust {evaluation['sklearn_trustworthiness']:.4f}",
            "seconds": evaluation["sklearn_seconds"],
            "vs_sklearn": f"KL {evaluation['sklearn_kl_divergence']:.3f} (whole set)",
        },
        {
            "kind": "tsne",
            "setting": setting,
            "method": "sklearn PCA (2-D)",
            "quality": f"trust {trustworthiness(x, pca_2d, n_neighbors=5):.4f}",
            "seconds": pca_seconds,
        },
    ]


def bench_hierarchical(data: Dataset, quick: bool) -> list[dict[str, Any]]:
    assert data.y is not None
    x = scaled(data, "standard")
    rows = []
    for linkage in LINKAGES[:1] if quick else LINKAGES:
        spec = {"params": {"n_clusters": 10, "linkage": linkage}}
        model, seconds = run_kind("hierarchical", spec, data)
        reference, theirs = timed(
            lambda m=linkage: AgglomerativeClustering(10, linkage=m).fit(x)  # type: ignore[misc]
        )
        theirs_scores = labels_scores(data.y, reference.labels_)
        common = {"kind": "hierarchical", "setting": f"{linkage}, 10 clusters"}
        ev = model.evaluation
        rows.append(
            {
                **common,
                "method": "thermoml",
                "quality": f"ari {ev['ari']:.3f} nmi {ev['nmi']:.3f}",
                "seconds": seconds,
                "vs_sklearn": "same labels" if ev["ari"] == theirs_scores["ari"] else "differs",
            }
        )
        rows.append(
            {
                **common,
                "method": "sklearn Agglomerative",
                "quality": f"ari {theirs_scores['ari']:.3f} nmi {theirs_scores['nmi']:.3f}",
                "seconds": theirs,
            }
        )
    return rows


def bench_dcn(data: Dataset, seed: int, quick: bool) -> list[dict[str, Any]]:
    assert data.y is not None
    spec: dict[str, Any] = {
        "params": {"n_clusters": 10, "latent_dim": 10, "hidden": [256, 64], "pretrain_epochs": 50},
        "preprocessing": {"scale": "minmax"},
        "training": {"epochs": 30, "batch_size": 128, "seed": seed},
    }
    if quick:
        spec["params"].update(pretrain_epochs=2, hidden=[64])
        spec["training"].update(epochs=1, telemetry={"every_steps": 10**6})
    model, seconds = run_kind("dcn", spec, data)
    ev = model.evaluation
    x = scaled(data, "minmax")
    labels, theirs = timed(lambda: KMeans(10, n_init=10, random_state=seed).fit_predict(x))
    s = labels_scores(data.y, labels)
    common = {"kind": "dcn", "setting": "10 clusters, latent 10"}
    return [
        {
            **common,
            "method": "thermoml",
            "quality": f"ari {ev['ari']:.3f} nmi {ev['nmi']:.3f}",
            "seconds": seconds,
            "vs_sklearn": f"latent k-means start: ari {ev['initial_ari']:.3f}",
        },
        {
            **common,
            "method": "sklearn KMeans (pixels)",
            "quality": f"ari {s['ari']:.3f} nmi {s['nmi']:.3f}",
            "seconds": theirs,
        },
    ]


def randomized_accuracy(quick: bool) -> list[dict[str, Any]]:
    """Relative error of the randomised method's explained variances against the exact SVD, and
    the share of the exact top-k subspace's variance its components miss."""
    from ml.reduction.pca_model import decompose

    digits = load_builtin("digits")
    x = scaled(digits, "standard")
    rng = np.random.default_rng(0)
    n, d = (300, 600) if quick else (1000, 2000)
    u = np.linalg.qr(rng.standard_normal((n, 100)))[0]
    v = np.linalg.qr(rng.standard_normal((d, 100)))[0]
    wide = (u * 100 * 0.9 ** np.arange(100)) @ v.T + 0.5 * rng.standard_normal((n, d))
    cases = [
        ("digits", x, 10, None),
        ("digits", x, 10, 7),
        ("digits", x, 30, None),
        (f"wide {n}x{d}, decaying + noise", wide, 20, None),
        (f"flat noise {n}x{d}", rng.standard_normal((n, d)), 20, None),
    ]
    rows = []
    for name, data, k, passes in cases:
        exact, exact_seconds = timed(lambda a=data: decompose(a, method="svd"))  # type: ignore[misc]
        fast, fast_seconds = timed(
            lambda a=data, k=k, p=passes: decompose(  # type: ignore[misc]
                a, method="randomized", n_components=k, power_iterations=p
            )
        )
        relative = np.abs(fast.explained_variance / exact.explained_variance[:k] - 1)
        centred = data - data.mean(axis=0)
        captured = np.sum((centred @ fast.components.T) ** 2)
        best = np.sum((centred @ exact.components[:k].T) ** 2)
        rows.append(
            {
                "data": name,
                "k": k,
                "passes": passes if passes is not None else "auto",
                "first_rel_error": f"{relative[0]:.1e}",
                "top_half_rel_error": f"{relative[: max(1, k // 2)].max():.1e}",
                "max_rel_error": f"{relative.max():.1e}",
                "variance_missed": f"{1 - captured / best:.1e}",
                "svd_s": exact_seconds,
                "randomized_s": fast_seconds,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small runs: seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import ml.core.training  # noqa: F401  (TensorFlow's import is not part of any method's time)

    data = load_builtin("digits")
    rows = [
        *bench_pca(data, args.seed),
        *bench_tsne(data, args.seed, args.quick),
        *bench_hierarchical(data, args.quick),
        *bench_dcn(data, args.seed, args.quick),
    ]
    for row in rows:
        row["seconds"] = round(float(row["seconds"]), 2)
    accuracy = randomized_accuracy(args.quick)
    quick = " — quick: smoke numbers" if args.quick else ""
    print(f"digits ({data.rows} rows, 64 features){quick}")
    print(table(rows, ["kind", "setting", "method", "quality", "seconds", "vs_sklearn"]))
    print("\nrandomised PCA against the exact SVD")
    columns = [
        "data",
        "k",
        "passes",
        "first_rel_error",
        "top_half_rel_error",
        "max_rel_error",
        "variance_missed",
        "svd_s",
        "randomized_s",
    ]
    print(table(accuracy, columns))
    report = {"quick": args.quick, "seed": args.seed, "digits": rows, "randomized": accuracy}
    print(f"wrote {write_report('reduction', report)}")


if __name__ == "__main__":
    main()
