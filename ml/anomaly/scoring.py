"""Training an autoencoder or VAE for anomaly scoring: which rows are normal, the splits,
the threshold calibrated on held-out normal rows, and ROC-AUC / PR-AUC on a labelled split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.core.preprocessing import Scaler
from ml.core.reporting import JobFailed, ModelOutcome, Reporter, RunContext, RunOutcome
from ml.core.splits import split_indices, stratified_split_indices


def _as_set(labels: int | list[int] | None) -> set[int] | None:
    if labels is None:
        return None
    return {labels} if isinstance(labels, int) else set(labels)


def anomaly_mask(
    y: np.ndarray | None, params: Any, dataset_anomaly: int | None
) -> np.ndarray | None:
    """True for anomalous rows, from `normal_label` / `anomaly_label` / the data set's own
    anomaly class; None when the labels say nothing about anomalies."""
    if y is None:
        if params.normal_label is not None or params.anomaly_label is not None:
            raise JobFailed("invalid_data", "normal_label / anomaly_label need a labelled data set")
        return None
    normal, anomalous = _as_set(params.normal_label), _as_set(params.anomaly_label)
    if normal is None and anomalous is None and dataset_anomaly is not None:
        anomalous = {dataset_anomaly}
    labels = y.astype(np.int64)
    if normal is not None:
        missing = normal - set(np.unique(labels).tolist())
        if missing:
            raise JobFailed("invalid_data", f"normal_label {sorted(missing)} is not in the labels")
        return ~np.isin(labels, list(normal))
    if anomalous is not None:
        return np.isin(labels, list(anomalous))
    return None


@dataclass
class Prepared:
    train: np.ndarray
    validation: np.ndarray
    evaluation: np.ndarray
    evaluation_truth: np.ndarray | None  # True = anomaly
    scaler: Scaler


def prepare(spec: Any, context: RunContext) -> Prepared:
    data = context.dataset
    if data is None:
        raise JobFailed("invalid_data", "this kind needs a data set (`dataset` in the spec)")
    x = np.asarray(data.x, dtype=np.float32)
    if x.ndim == 2 or x.ndim == 4:
        pass
    elif x.ndim == 3:  # (rows, H, W): grey images, add the channel axis
        x = x[..., None]
    else:
        raise JobFailed("invalid_data", f"rows of shape {list(x.shape[1:])} are not supported")
    params, training = spec.params, spec.training
    truth = anomaly_mask(data.y, params, data.anomaly_label)
    evaluation_split = params.evaluation_split if truth is not None else 0.0
    if truth is not None:
        parts = stratified_split_indices(
            truth.astype(np.int64), training.validation_split, evaluation_split, training.seed
        )
        normal = ~truth
        train_idx = parts.train[normal[parts.train]]
        val_idx = parts.validation[normal[parts.validation]]
    else:
        parts = split_indices(len(x), training.validation_split, 0.0, training.seed)
        train_idx, val_idx = parts.train, parts.validation
    if len(train_idx) < 8:
        raise JobFailed("invalid_data", f"only {len(train_idx)} normal training rows")
    scaler = Scaler.from_spec(spec.preprocessing).fit(x[train_idx])
    if getattr(params, "likelihood", None) == "bernoulli" or params.resolved_loss == (
        "binary_crossentropy"
    ):
        scaled = scaler.transform(x[train_idx])
        if scaled.min() < -1e-6 or scaled.max() > 1 + 1e-6:
            raise JobFailed(
                "invalid_data",
                "a Bernoulli likelihood / cross-entropy needs inputs in [0, 1]: "
                'use "preprocessing": {"scale": "minmax"}',
            )

    def scaled(idx: np.ndarray) -> np.ndarray:
        return scaler.transform(x[idx]).astype(np.float32)

    return Prepared(
        train=scaled(train_idx),
        validation=scaled(val_idx),
        evaluation=scaled(parts.evaluation),
        evaluation_truth=truth[parts.evaluation] if truth is not None else None,
        scaler=scaler,
    )


def threshold(scores: np.ndarray, contamination: float, target_fpr: float | None) -> float:
    """The (1 − c) quantile of normal scores: about c of normal rows score above it."""
    rate = target_fpr if target_fpr is not None else contamination
    return float(np.quantile(scores, 1.0 - rate))


def evaluate(scores: np.ndarray, truth: np.ndarray, cut: float) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if truth.all() or not truth.any():
        return {}
    flagged = scores > cut
    return {
        "roc_auc": float(roc_auc_score(truth, scores)),
        "pr_auc": float(average_precision_score(truth, scores)),
        "false_positive_rate": float(flagged[~truth].mean()),
        "recall": float(flagged[truth].mean()),
        "evaluation_rows": len(truth),
        "evaluation_anomalies": int(truth.sum()),
    }


def train_autoencoding(
    kind: str, spec: Any, reporter: Reporter, context: RunContext, capabilities: list[str]
) -> RunOutcome:
    from ml.anomaly import autoencoding as ae
    from ml.core.training import Trainer, configure_determinism, device_name

    configure_determinism(spec.training)
    data = prepare(spec, context)
    input_shape = tuple(int(s) for s in data.train.shape[1:])
    try:
        objective: Any = (
            ae.VaeObjective(spec.params, input_shape)
            if kind == "vae"
            else ae.AutoencoderObjective(spec.params, input_shape)
        )
    except ValueError as exc:
        raise JobFailed("invalid_data", str(exc)) from exc
    extra_metrics = None
    if kind == "vae":
        objective.log_jacobian = data.scaler.log_abs_det_jacobian()
        extra_metrics = objective.vae_metrics
    trainer = Trainer(objective, spec.training, reporter, extra_metrics=extra_metrics)
    resumed = trainer.restore_checkpoint(
        context.checkpoint_dir, lambda folder: ae.load_weights(objective, folder)
    )
    fit = trainer.fit(
        data.train,
        data.validation if len(data.validation) else None,
        checkpoint_dir=context.checkpoint_dir,
        save_weights=lambda folder: ae.save_weights(objective, folder),
    )
    held_out = data.validation if len(data.validation) else data.train
    extras: dict[str, np.ndarray] = {}
    if kind == "vae":
        score_fn = objective.score
        if not objective.bernoulli:
            extras["log_sigma"] = objective.log_sigma.numpy()
    else:
        variance = ae.residual_variance(objective, np.concatenate([data.train, data.validation]))
        extras["residual_variance"] = variance

        def score_fn(x: Any) -> Any:
            return ae.standardized_error(x, objective.reconstruct(x), variance)

    normal_scores = ae.batched(score_fn, held_out)
    cut = threshold(normal_scores, spec.params.contamination, spec.params.target_fpr)
    evaluation: dict[str, Any] = {}
    if data.evaluation_truth is not None and len(data.evaluation):
        evaluation = evaluate(ae.batched(score_fn, data.evaluation), data.evaluation_truth, cut)
    files = ae.save_artifacts(objective, context.workdir / "model", extras)
    output_sigmoid = kind == "autoencoder" and objective.output_sigmoid
    output_sigmoid = output_sigmoid or (kind == "vae" and objective.bernoulli)
    calibration = {
        "threshold": cut,
        "contamination": spec.params.contamination,
        "target_fpr": spec.params.target_fpr,
        "calibration_rows": len(held_out),
        "score": "negative_elbo" if kind == "vae" else "standardized_reconstruction_error",
        "output_sigmoid": bool(output_sigmoid),
    }
    model = ModelOutcome(
        files=files,
        input_shape=list(input_shape),
        capabilities=capabilities,
        preprocessing=data.scaler.to_dict(),
        calibration=calibration,
        evaluation=evaluation,
    )
    result = {
        **fit.summary(resumed=resumed),
        "threshold": cut,
        "energy_units": "training loss: "
        + ("nats per example (−ELBO)" if kind == "vae" else "mean over features"),
        **{k: v for k, v in evaluation.items() if k in ("roc_auc", "pr_auc")},
    }
    return RunOutcome(result=result, device=device_name(), model=model)
