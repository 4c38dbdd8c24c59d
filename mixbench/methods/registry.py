"""The method registry: ``@register_method`` on a :class:`MixMethod` subclass makes it selectable by its
``name`` (``method=<name>`` on the command line, whose defaults are the method group's config ``<name>``)."""

from __future__ import annotations

from typing import TypeVar

METHODS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_method(cls: T) -> T:
    """Register ``cls`` under ``cls.name``; a second class under the same name is refused."""
    name = cls.name
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(
            f"two methods are registered as '{name}': {METHODS[name].__name__} and {cls.__name__}"
        )
    METHODS[name] = cls
    return cls
