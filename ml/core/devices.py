"""Where a job trains: one device, or several under a MirroredStrategy, in mixed precision or not.

TensorFlow is imported here; import this module only inside a job's process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import keras
import tensorflow as tf

from ml.core.reporting import JobFailed
from ml.core.spec import Resources

MIXED_POLICY = "mixed_bfloat16"


def _short(device: str) -> str:
    """`/job:localhost/replica:0/task:0/device:GPU:1` -> `GPU:1`."""
    return device.rsplit("device:", 1)[-1]


def device_name() -> str:
    """The device(s) training runs on: the current strategy's replicas, comma-separated."""
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:
        return ",".join(_short(d) for d in strategy.extended.worker_devices)
    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


def _mirrored(devices: int) -> tf.distribute.Strategy:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if len(gpus) < devices:
            raise JobFailed(
                "invalid_resources",
                f"resources.devices = {devices}, but this worker has {len(gpus)} GPU(s)",
            )
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(devices)])
    cpus = tf.config.list_physical_devices("CPU")
    # Once the runtime has started the split is refused: the devices it has are the ones there are.
    with suppress(RuntimeError):
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
        )
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < devices:
        raise JobFailed(
            "invalid_resources",
            f"resources.devices = {devices}, but this process has {len(logical)} CPU device(s) "
            "and no GPU (TensorFlow started before the CPU could be split)",
        )
    return tf.distribute.MirroredStrategy(
        [d.name for d in logical[:devices]],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )


@contextmanager
def job_devices(resources: Resources) -> Iterator[tf.distribute.Strategy]:
    """Builds and trains what runs inside on `resources.devices` devices (a MirroredStrategy
    scope when there are several) in `resources.mixed_precision`. Enter it before the job's
    first TensorFlow operation: splitting the CPU into logical devices is only possible then."""
    previous = keras.config.dtype_policy()
    strategy = (
        _mirrored(resources.devices) if resources.devices > 1 else tf.distribute.get_strategy()
    )
    if resources.mixed_precision:
        keras.config.set_dtype_policy(MIXED_POLICY)
    try:
        with strategy.scope():
            yield strategy
    finally:
        keras.config.set_dtype_policy(previous)
