"""fedharness engine: config, round loop, Ray workers, client-state store, tracking."""

__version__ = "0.1.0"
