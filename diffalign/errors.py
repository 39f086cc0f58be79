"""Errors a user's input can cause; the CLI prints their message and exits with code 2."""


class ModelLoadError(ValueError):
    """A model path or hub id that cannot be loaded (missing folder, wrong pipeline class, no access)."""
