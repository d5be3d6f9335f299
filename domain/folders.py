"""Folder names across two servers: translation, special-use mapping, exclusion, the folder plan.

Names here are Unicode; modified UTF-7 (RFC 3501 section 5.1.3) is the
connection's business. A name is split into its *path* (components below
the personal-namespace prefix) on the source and joined again with the
target's prefix and separator, so ``INBOX.Sent.2019`` (prefix ``INBOX.``,
separator ``.``) becomes ``Sent/2019`` on a ``/`` server.

A component that contains the *target's* separator would silently become
a hierarchy there. It is escaped instead: the separator character inside the
component is replaced by a look-alike (``/`` -> U+2215 DIVISION SLASH,
``.`` -> U+2024 ONE DOT LEADER, ``\\`` -> U+29F5 REVERSE SOLIDUS OPERATOR,
anything else -> ``_``), so ``a/b`` on a ``.`` server becomes ``a∕b`` on a
``/`` server, one folder as before.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SEPARATOR_ESCAPES = {"/": "\u2215", ".": "\u2024", "\\": "\u29f5"}

# RFC 6154 section 2.
SPECIAL_USES = ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive")

# Top-level names that mean a special-use folder when the server sets no attribute.
WELL_KNOWN_NAMES: dict[str, str] = {
    **{name: "\\Sent" for name in ("sent", "sent items", "sent messages", "sent mail")},
    **{name: "\\Drafts" for name in ("drafts", "draft")},
    **{name: "\\Trash" for name in ("trash", "deleted items", "deleted messages")},
    **{name: "\\Junk" for name in ("junk", "spam", "junk e-mail", "junk email", "bulk mail")},
    **{name: "\\Archive" for name in ("archive", "archives")},
}


@dataclass(frozen=True)
class Namespace:
    """A personal namespace: its prefix (``INBOX.`` or ``""``) and hierarchy separator (``""`` when flat)."""

    prefix: str
    separator: str


@dataclass(frozen=True)
class ListedFolder:
    """One folder as LIST (and LSUB) reported it."""

    name: str
    attributes: frozenset[str] = frozenset()
    subscribed: bool = False

    @property
    def selectable(self) -> bool:
        lowered = {a.lower() for a in self.attributes}
        return not ({"\\noselect", "\\nonexistent"} & lowered)


@dataclass(frozen=True)
class PlannedFolder:
    """Where one source folder goes on the target, and how."""

    source: str
    target: str
    path: tuple[str, ...]
    selectable: bool
    subscribed: bool
    special_use: str | None = None


@dataclass(frozen=True)
class ExcludedFolder:
    source: str
    pattern: str


@dataclass(frozen=True)
class FolderPlan:
    folders: tuple[PlannedFolder, ...]
    excluded: tuple[ExcludedFolder, ...]

    def by_source(self) -> dict[str, PlannedFolder]:
        return {folder.source: folder for folder in self.folders}


def split_name(name: str, namespace: Namespace) -> tuple[str, ...]:
    """The path of a server folder name below the namespace prefix."""
    if name.upper() == "INBOX":
        return ("INBOX",)
    if namespace.prefix and name.startswith(namespace.prefix):
        name = name[len(namespace.prefix):]
    if not namespace.separator:
        return (name,)
    return tuple(name.split(namespace.separator))


def escape_component(component: str, separator: str) -> str:
    """A path component made safe for a server whose separator is `separator`."""
    if not separator or separator not in component:
        return component
    return component.replace(separator, SEPARATOR_ESCAPES.get(separator, "_"))


def join_name(path: Sequence[str], namespace: Namespace) -> str:
    """The server folder name of `path` in `namespace` (INBOX stays INBOX)."""
    if len(path) == 1 and path[0].upper() == "INBOX":
        return "INBOX"
    parts = [escape_component(part, namespace.separator) for part in path]
    if not namespace.separator:
        return namespace.prefix + "_".join(parts)
    return namespace.prefix + namespace.separator.join(parts)


def canonical_name(path: Sequence[str]) -> str:
    """The path as shown to people and matched by `exclude_folders`: components joined with ``/``."""
    return "/".join(path)


def special_use_of(folder: ListedFolder, path: Sequence[str]) -> str | None:
    """The RFC 6154 use of a folder: its attribute, else a well-known top-level name."""
    for attribute in folder.attributes:
        for use in SPECIAL_USES:
            if attribute.lower() == use.lower():
                return use
    if len(path) == 1:
        return WELL_KNOWN_NAMES.get(path[0].lower())
    return None


def special_use_names(listed: Iterable[ListedFolder]) -> dict[str, str]:
    """Special use (``\\Sent``) -> the first folder carrying that attribute."""
    out: dict[str, str] = {}
    for folder in listed:
        for attribute in folder.attributes:
            for use in SPECIAL_USES:
                if attribute.lower() == use.lower():
                    out.setdefault(use, folder.name)
    return out


def excluded_by(name: str, path: Sequence[str], patterns: Iterable[str]) -> str | None:
    """The first `exclude_folders` pattern matching the folder, by its canonical or its server name."""
    canonical = canonical_name(path)
    for pattern in patterns:
        if fnmatch.fnmatchcase(canonical, pattern) or fnmatch.fnmatchcase(name, pattern):
            return pattern
        if canonical.upper() == "INBOX" and pattern.upper() == "INBOX":
            return pattern
    return None


def plan_folders(
    listed: Iterable[ListedFolder],
    source: Namespace,
    target: Namespace,
    target_special: Mapping[str, str],
    exclude: Sequence[str] = (),
) -> FolderPlan:
    """Map every source folder onto a target name.

    `target_special` maps a special use (``\\Sent``) to the target's folder
    name for it; a source folder with that use, and everything below it,
    moves there. When two source folders claim the same special use, the
    first (by name) is mapped and the other keeps its own name.
    """
    folders = sorted(listed, key=lambda f: (split_name(f.name, source) != ("INBOX",), f.name))
    paths = {f.name: split_name(f.name, source) for f in folders}
    roots: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {}
    claimed: set[str] = set()
    for folder in folders:
        path = paths[folder.name]
        use = special_use_of(folder, path)
        if use is None or use in claimed or use not in target_special:
            continue
        claimed.add(use)
        roots[path] = (use, split_name(target_special[use], target))

    planned: list[PlannedFolder] = []
    excluded: list[ExcludedFolder] = []
    for folder in folders:
        path = paths[folder.name]
        pattern = excluded_by(folder.name, path, exclude)
        if pattern is not None:
            excluded.append(ExcludedFolder(folder.name, pattern))
            continue
        target_path, use = path, None
        for depth in range(len(path), 0, -1):
            root = roots.get(path[:depth])
            if root is not None:
                target_path = root[1] + path[depth:]
                use = root[0] if depth == len(path) else None
                break
        planned.append(
            PlannedFolder(
                source=folder.name,
                target=join_name(target_path, target),
                path=path,
                selectable=folder.selectable,
                subscribed=folder.subscribed,
                special_use=use,
            )
        )
    return FolderPlan(tuple(planned), tuple(excluded))
