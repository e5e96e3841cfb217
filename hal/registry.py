"""Back-end registries: a config's `backend = "name"` -> the factory that builds it, imported only when used.

Like python-can's interfaces: each device kind has a registry holding its built-in back-ends as
"module:attribute" strings (nothing is imported until a board names one, so a PC without evdev, lgpio or
spidev loads every board that does not use them), plus the back-ends other installed packages register
under the entry-point group `evse_agent.backends.<kind>`, e.g. in a board maker's pyproject.toml:

    [project.entry-points."evse_agent.backends.meter"]
    acme-spi = "acme_evse.meter:build_meter"

How to write one: docs/hal-backends.md. The built-in back-ends are listed in pyproject.toml's entry points
too, for tools that read the metadata; the mapping here is what counts, so a source checkout without
installed metadata works the same.

A name is never taken over silently. An entry point naming a built-in back-end with another target is
ignored with a logged warning: the built-in stays in use, so installing a package cannot swap a
safety-relevant back-end (the co-processor pilot, a contactor) under a board config. Two packages
registering one name make that name unusable: a config naming it gets an error saying who clashes (a board
that does not use the name is unaffected).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from hal.board import ConfigTable

log = logging.getLogger(__name__)

GROUP_PREFIX = "evse_agent.backends."


class BackendClash(Exception):
    """A back-end name is claimed twice (a built-in and an entry point, or two entry points)."""


class BackendLoadError(Exception):
    """A registered back-end's module or attribute could not be imported."""


def _all_entry_points() -> tuple[EntryPoint, ...]:
    """Every evse_agent.backends.* entry point on sys.path, read once per process (the scan walks every
    distribution: some tens of ms). A distribution found twice on sys.path counts once, the first."""
    global _ENTRY_POINTS
    if _ENTRY_POINTS is None:
        import importlib.metadata  # here: the control process of a board of built-ins never loads it

        seen: set[str] = set()
        found: list[EntryPoint] = []
        for dist in importlib.metadata.distributions():
            name = (dist.name or "").lower().replace("_", "-")
            if name in seen:
                continue
            seen.add(name)
            found.extend(ep for ep in dist.entry_points if ep.group.startswith(GROUP_PREFIX))
        _ENTRY_POINTS = tuple(found)
    return _ENTRY_POINTS


_ENTRY_POINTS: tuple[EntryPoint, ...] | None = None


def forget_entry_points() -> None:
    """Scan the installed distributions again on the next lookup (after installing a back-end at run time)."""
    global _ENTRY_POINTS
    _ENTRY_POINTS = None


def _provider(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    where = f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"
    return f"{where} ({entry_point.value})"


class BackendRegistry(Mapping[str, Any]):
    """name -> factory for one device kind. Iterating gives the built-in names first, in their order."""

    def __init__(self, kind: str, builtins: dict[str, str]):
        self.kind = kind
        self.group = GROUP_PREFIX + kind
        self._builtins = dict(builtins)  # name -> "module:attribute"
        self._loaded: dict[str, Any] = {}
        self._scanned: tuple[object, dict[str, str], dict[str, str]] | None = None

    def _registered(self) -> tuple[dict[str, str], dict[str, str]]:
        """(name -> target of a usable entry point, name -> why it clashes); a clash is logged once."""
        entry_points = _all_entry_points()
        if self._scanned is None or self._scanned[0] is not entry_points:
            self._scanned = (entry_points, *self._scan(entry_points))
        return self._scanned[1], self._scanned[2]

    def _scan(self, entry_points: tuple[EntryPoint, ...]) -> tuple[dict[str, str], dict[str, str]]:
        targets: dict[str, str] = {}
        providers: dict[str, list[str]] = {}
        for entry_point in (ep for ep in entry_points if ep.group == self.group):
            if self._builtins.get(entry_point.name) == entry_point.value:
                continue  # evse-agent's own metadata repeating a built-in
            if targets.get(entry_point.name) == entry_point.value:
                continue  # the same distribution seen twice on sys.path
            targets[entry_point.name] = entry_point.value
            providers.setdefault(entry_point.name, []).append(_provider(entry_point))
        clashes = {}
        for name, who in providers.items():
            if name in self._builtins:
                clashes[name] = (f'{self.kind} back-end "{name}" is built in, and {", ".join(who)} registers '
                                 f"it too: a package cannot replace a built-in back-end; it must use another name")
            elif len(who) > 1:
                clashes[name] = f'{self.kind} back-end "{name}" is registered by {" and by ".join(sorted(who))}'
        for name, why in clashes.items():
            targets.pop(name, None)
            if name in self._builtins:  # the built-in stays in use: a warning, not a config error
                log.warning("%s (the built-in one is used)", why)
        return targets, clashes

    def names(self) -> tuple[str, ...]:
        """Every usable name: the built-ins, then the installed ones, sorted."""
        external, clashes = self._registered()
        return (*self._builtins, *sorted(n for n in external if n not in clashes))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._builtins or name in self._registered()[0])

    def __getitem__(self, name: str) -> Any:
        return self.lookup(name)

    def lookup(self, name: str, *, check_installed: bool = False) -> Any:
        """The factory, imported now. Raises KeyError for an unknown name, BackendClash for a name two
        packages claim, BackendLoadError when its module does not import.

        A built-in name is found without reading the installed distributions (the control process starts
        lean: the scan costs some 100 ms and MB); check_installed=True reads them anyway and logs a package
        that registers the built-in name too (a dry run does: the agent before it starts, `evse check`)."""
        target = self._builtins.get(name)
        if check_installed:
            self._registered()
        if target is None:
            external, clashes = self._registered()
            if name in clashes:
                raise BackendClash(clashes[name])
            target = external.get(name)
        if target is None:
            raise KeyError(name)
        if target not in self._loaded:
            self._loaded[target] = _load(target, f'{self.kind} back-end "{name}"')
        return self._loaded[target]


    def from_table(self, table: ConfigTable, key: str = "backend", *, check_installed: bool = False
                   ) -> tuple[str, Any]:
        """(name, factory) for the back-end a config table names; a BoardConfigError naming the table's
        key and the known back-ends when the name is unknown, claimed twice, or does not import."""
        value = table.data.get(key)
        if not (isinstance(value, str) and value in self._builtins):  # listing the names reads the installed
            table.string(key, choices=self.names())
        name = table.string(key)
        try:
            return name, self.lookup(name, check_installed=check_installed)
        except (BackendClash, BackendLoadError) as exc:
            raise table.error(key, str(exc)) from exc


def _load(target: str, what: str) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        value: Any = importlib.import_module(module_name.strip())
        for part in attribute.strip().split(".") if attribute.strip() else ():
            value = getattr(value, part)
    except ImportError as exc:
        raise BackendLoadError(f"{what} needs {exc.name or module_name}, which is not installed: {exc}") from exc
    except AttributeError as exc:
        raise BackendLoadError(f"{what}: {target} does not exist: {exc}") from exc
    return value
