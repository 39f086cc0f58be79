"""Plugins found through entry points, the way pytest finds its plugins (DESIGN.md §2).

A lower layer that keeps a registry by name (scorers in ``diffalign.rewards``, user encoders, the
benchmark judges) lets higher packages and third parties add to it without importing them: each entry
of a group names a module whose import registers its entries, e.g. in a ``pyproject.toml``::

    [project.entry-points."diffalign.scorers"]
    toy = "diffalign.toy.judge"

``load_plugins(group)`` imports them once per process. A plugin that fails to import is reported as a
``RuntimeWarning`` naming it and does not take the others down with it.
"""

from __future__ import annotations

import importlib.metadata
import warnings

_loaded: set[str] = set()


def load_plugins(group: str) -> None:
    """Import every module the installed packages name in entry-point ``group`` (once per process)."""
    if group in _loaded:
        return
    _loaded.add(group)
    for entry_point in importlib.metadata.entry_points(group=group):
        try:
            entry_point.load()
        except Exception as error:  # a broken plugin must not take the others down with it
            warnings.warn(f"{group} plugin {entry_point.name!r} ({entry_point.value}) failed to load: {error!r}", RuntimeWarning,
                          stacklevel=3)
