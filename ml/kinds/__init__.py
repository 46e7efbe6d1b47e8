"""Kinds not yet moved to their family's package; each registers itself with
:func:`ml.core.registry.register_kind`."""

KIND_MODULES: tuple[str, ...] = ()
