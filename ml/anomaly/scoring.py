"""Training an autoencoder or VAE for anomaly scoring: which rows are normal, the splits,
the threshold calibrated on held-out normal rows, and ROC-AUC / PR-AUC on a labelled split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.anomaly.drift import keep_reference
from ml.core.preprocessing import Scaler
from ml.core.registry import get_kind
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
    if params.unit_interval_inputs:
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


def calibrate(params: Any, normal: np.ndarray, score: str, **extra: Any) -> dict[str, Any]:
    """What a served detector keeps of its calibration: the threshold made from the scores of
    held-out normal rows (`normal`) by `params.contamination` or `params.target_fpr`, what it
    was made from, the score's name, and `extra` fields of the kind's."""
    return {
        "threshold": threshold(normal, params.contamination, params.target_fpr),
        "contamination": params.contamination,
        "target_fpr": params.target_fpr,
        "calibration_rows": len(normal),
        "score": score,
        **extra,
    }


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


def run_autoencoding(spec: Any, reporter: Reporter, context: RunContext) -> RunOutcome:
    """The `run` of the autoencoder and VAE kinds, on the devices the job asked for."""
    from ml.core.training import job_devices

    with job_devices(spec.resources):
        return train_autoencoding(spec, reporter, context)


def train_autoencoding(spec: Any, reporter: Reporter, context: RunContext) -> RunOutcome:
    """Train the objective the spec's params build, calibrate its anomaly threshold on held-out
    normal rows and evaluate it on the labelled split."""
    from ml.anomaly import autoencoding as ae
    from ml.core.training import Trainer, configure_determinism, device_name

    configure_determinism(spec.training)
    data = prepare(spec, context)
    input_shape = tuple(int(s) for s in data.train.shape[1:])
    try:
        objective = spec.params.objective(input_shape)
    except ValueError as exc:
        raise JobFailed("invalid_data", str(exc)) from exc
    extra_metrics = objective.extra_metrics(data.scaler)
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
    score_fn, extras = objective.scorer(np.concatenate([data.train, data.validation]))
    calibration = calibrate(
        spec.params,
        ae.batched(score_fn, held_out),
        objective.score_name,
        output_sigmoid=bool(objective.output_sigmoid),
    )
    cut = calibration["threshold"]
    evaluation: dict[str, Any] = {}
    if data.evaluation_truth is not None and len(data.evaluation):
        evaluation = evaluate(ae.batched(score_fn, data.evaluation), data.evaluation_truth, cut)
    folder = context.workdir / "model"
    model = ModelOutcome(
        files=ae.save_artifacts(objective, folder, extras),
        input_shape=list(input_shape),
        capabilities=sorted(get_kind(spec.kind).serves),
        preprocessing=data.scaler.to_dict(),
        calibration=calibration,
        evaluation=evaluation,
    )
    keep_reference(model, data.train, spec.training.seed, folder)
    result = {
        **fit.summary(resumed=resumed),
        "threshold": cut,
        "energy_units": f"training loss: {objective.energy_units}",
        **{k: v for k, v in evaluation.items() if k in ("roc_auc", "pr_auc")},
    }
    return RunOutcome(result=result, device=device_name(), model=model)
