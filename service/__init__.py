"""The HTTP side of thermoml and the infrastructure it shares with the workers."""
