"""Projections found through the ``chiffon.projections`` entry points.

Kept apart from ``host`` (which brings in the service framework) so a process that
needs one projection, such as a rebuild worker, imports that projection's module only.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from chiffon.projections.base import Projection


def all_projections() -> dict[str, type[Projection]]:
    loaded = [ep.load() for ep in entry_points(group="chiffon.projections")]
    return {cls.name: cls for cls in loaded}


def projection_named(name: str) -> type[Projection]:
    """The projection called ``name``, loading only its entry point when it is named
    alike (as every one of Chiffon's is); otherwise looked for among all of them."""
    for ep in entry_points(group="chiffon.projections", name=name):
        cls: type[Projection] = ep.load()
        if cls.name == name:
            return cls
    found = all_projections().get(name)
    if found is None:
        raise KeyError(f"no projection named {name!r}")
    return found
