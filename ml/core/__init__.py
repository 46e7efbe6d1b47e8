"""What every kind shares: the registry, job specs, reporting, the training loop and its
telemetry, preprocessing, data sets and their splits, and the serving interface."""
