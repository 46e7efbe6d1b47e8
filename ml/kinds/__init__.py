"""One module per job kind; each registers itself with :func:`ml.registry.register_kind`."""
