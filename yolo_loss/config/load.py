"""Load YAML configs into the typed schema of :mod:`yolo_loss.config.schema`, and write them back.

A config file is plain YAML (read with ``yaml.safe_load`` only) whose top level is a mapping of the
sections of :class:`~yolo_loss.config.schema.Config`. Three mechanisms build the final config:

- ``_base_: path`` or ``_base_: [path, ...]`` (top level only, relative to the including file): the
  bases are merged in order, then the file itself on top. Mappings merge key by key; lists and
  scalars replace (``train.steps: [0.5]`` over ``[0.8, 0.9]`` gives ``[0.5]``).
- Dotted overrides ``KEY=VALUE`` (``--set`` on the command line) applied after all files. The value is
  parsed as YAML (``3``, ``true``, ``[12, 16]``, ``bce``); a number in the key indexes a list
  (``model.anchors.0=[12,16]``).
- Conversion to the dataclasses, driven by their type hints and field metadata (``choices``,
  ``range``, ``path``), then each section's ``check()``.

Every problem is a :class:`ConfigError` naming the dotted key and the file (or ``--set``) that set
it, so that ``train.py`` can print one line and exit with status 2 instead of a traceback::

    configs/x.yaml: loss.xyy: unknown key; did you mean 'loss.xy'? (valid keys: xy, wh, ...)
    loss.xy: 'foo' is not one of bce, mse, mse_t, none (set in configs/x.yaml)

The first form is a problem in a file's text (a key the schema does not have, broken YAML, a bad
``_base_``); the second is a bad value, with where it came from.

Relative paths in ``path`` fields (``data.root``) are resolved against the folder of the file that
set them (``--set``: the working directory; a schema default: the folder of the top-level file) and
stored absolute, so that a run folder's ``config.yaml`` and a checkpoint mean the same data wherever
they are read from.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import difflib
import hashlib
import json
import math
import os
import reprlib
import sys
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from yolo_loss.config.schema import Config

BASE_KEY = "_base_"
OVERRIDE_SOURCE = "--set"

# Values quoted in messages are shortened: a message must stay one readable line.
_short_repr = reprlib.Repr()
_short_repr.maxstring = 60
_short_repr.maxother = 60
_short_repr.maxlist = 6


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config.

    Attributes:
        key: the full dotted key (``loss.focal_alpha``, ``model.anchors.0.1``); ``""`` for a problem
            with a whole file (broken YAML, a top level that is not a mapping).
        message: what is wrong and what is allowed.
        source: the file (as shown to the user), ``--set``, or the ``source`` given to
            :func:`config_from_dict` that set the key; ``None`` for a schema default.
        in_source_text: True for a problem in the source's text itself, shown as
            ``source: key: message``; False for a bad value, shown as ``key: message (set in source)``.
    """

    key: str
    message: str
    source: str | None = None
    in_source_text: bool = False

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}" if self.key else self.message
        if self.source is None:
            return text
        if self.in_source_text:
            return f"{self.source}: {text}"
        verb = "set by" if self.source == OVERRIDE_SOURCE else "set in"
        return f"{text} ({verb} {self.source})"


class ConfigError(Exception):
    """A config that cannot be loaded; ``str()`` gives one line per problem (usually one).

    Construct it from :class:`ConfigIssue` objects or from plain message strings.
    """

    def __init__(self, *issues: ConfigIssue | str) -> None:
        if not issues:
            raise ValueError("ConfigError needs at least one issue")
        self.issues: tuple[ConfigIssue, ...] = tuple(
            issue if isinstance(issue, ConfigIssue) else ConfigIssue("", issue) for issue in issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    @property
    def key(self) -> str:
        """The dotted key of the first problem (``""`` for a whole-file problem)."""
        return self.issues[0].key


@dataclass(frozen=True)
class _Source:
    """Where a key's value came from: the label shown in messages and the folder for relative paths."""

    label: str
    base_dir: str


# Dotted key -> the source of its value, for every node (sections and leaves) that a file, a
# --set override or a dict set. List elements are not listed; they inherit their list's source.
_Provenance = dict[str, _Source]


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = (), *,
                override_sources: Sequence[str] | None = None) -> Config:
    """Load a YAML config with its ``_base_`` files, apply dotted overrides and check the result.

    Args:
        path: the top-level YAML file.
        overrides: ``"key.sub=value"`` strings, applied in order after all files; the value is
            parsed with ``yaml.safe_load``.
        override_sources: where each override came from, as error messages name it (a study file's
            ``axes.loss.mse``); by default ``--set`` for every one.

    Raises:
        ConfigError: naming the file (or the override's source) and the dotted key of every problem found.
    """
    if override_sources is None:
        override_sources = [OVERRIDE_SOURCE] * len(overrides)
    if len(override_sources) != len(overrides):
        raise ValueError(f"{len(overrides)} overrides but {len(override_sources)} override sources")
    path_abs = os.path.abspath(os.fspath(path))
    label = _display_path(path_abs)
    tree, provenance = _load_tree(path_abs, label, chain=((os.path.realpath(path_abs), label),))
    for text, source in zip(overrides, override_sources):
        _apply_override(tree, provenance, text, source)
    return _build_config(tree, provenance, default_dir=os.path.dirname(path_abs))


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Build a config from a plain mapping (a checkpoint's ``config``, a test), with the same checks.

    Relative paths are resolved against the working directory (a dict has no folder of its own);
    the output of :func:`config_to_dict` is already absolute, so a round trip changes nothing.

    Args:
        data: a mapping shaped like the YAML files (no ``_base_``).
        source: what error messages name as having set the keys, e.g. the checkpoint path.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(ConfigIssue("", f"expected a mapping of sections, got {_describe(data)}", source, True))
    _check_string_keys(data, "", source)
    origin = _Source(source, os.getcwd())
    return _build_config(data, _provenance_of(data, origin, ""), default_dir=os.getcwd())


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Return a new config: ``cfg`` with dotted ``key=value`` overrides applied and checked again.

    ``cfg`` itself is left as it is. Keys not overridden carry no source in error messages.
    """
    tree = config_to_dict(cfg)
    provenance: _Provenance = {}
    for text in overrides:
        _apply_override(tree, provenance, text)
    return _build_config(tree, provenance, default_dir=os.getcwd())


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain dicts, lists and scalars, in schema field order (YAML- and JSON-able).

    Float fields are written as floats even where a default was an int literal (the schema's
    anchors), so that equal configs always give the same dict, dump and hash.
    """
    return _to_plain(cfg, type(cfg))


def flatten_config(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict (:func:`config_to_dict`) as ``{dotted.key: value}``, nested sections flattened."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flatten_config(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: Mapping[str, Any], cfg: Config) -> list[str]:
    """The dotted keys whose value in ``cfg`` differs from ``saved`` (a config dict written earlier, e.g. a
    checkpoint's), sorted. A key ``saved`` does not have and ``cfg`` holds at its default is not a change: it was
    added to the schema after ``saved`` was written, and a new key's default keeps the behaviour from before it.
    A key only ``saved`` has (since removed) is one."""
    mine, theirs = flatten_config(config_to_dict(cfg)), flatten_config(saved)
    defaults = flatten_config(config_to_dict(Config()))
    return sorted(key for key in mine.keys() | theirs.keys()
                  if (mine.get(key, _MISSING) != theirs.get(key, _MISSING)
                      and not (key not in theirs and key in defaults and mine[key] == defaults[key])))


_MISSING = object()


def dump_config(cfg: Config) -> str:
    """The config as YAML text that :func:`load_config` reads back to an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None, allow_unicode=True)


def config_hash(cfg: Config) -> str:
    """The first 12 hex digits of the sha256 of the config's canonical JSON (sorted keys, no spaces).

    Every field counts, ``name`` and the absolute ``data.root`` included.
    """
    canonical = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config PATH`` (required), ``--set KEY=VALUE ...`` (repeatable) and ``--print-config``.

    The overrides land in ``args.overrides`` (a list, in command-line order); the recipe handles
    ``args.print_config`` itself, after :func:`config_from_args`.
    """
    parser.add_argument("--config", required=True, metavar="PATH", help="the YAML config file")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config values after all files, e.g. loss.xy=mse model.anchors.0=[12,16]; "
                             "may be repeated")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config named by the arguments of :func:`add_config_arguments`."""
    return load_config(args.config, args.overrides)


@contextlib.contextmanager
def exit_on_config_error(*also: type[Exception]) -> Iterator[None]:
    """Turn a :class:`ConfigError` (and an exception of any type in ``also``, e.g. a missing data folder) into
    ``error: <message>`` on stderr and exit status 2, no traceback.

    Status 2 is what argparse uses for bad command-line input. Usable as ``with exit_on_config_error():``
    or as a decorator, ``@exit_on_config_error()``.
    """
    try:
        yield
    except (ConfigError, *also) as err:
        for line in str(err).splitlines():
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


# --------------------------------------------------------------------------------------------------
# Reading files and _base_ inheritance
# --------------------------------------------------------------------------------------------------

def _display_path(path_abs: str) -> str:
    """The path as messages show it: relative to the working directory when below it, else absolute."""
    relative = os.path.relpath(path_abs)
    return path_abs if relative.startswith(os.pardir) else relative


def _read_yaml_mapping(path_abs: str, label: str) -> dict[str, Any]:
    """Read one YAML file with ``yaml.safe_load``; an empty file is an empty mapping."""
    try:
        with open(path_abs, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise ConfigError(ConfigIssue("", "file not found", label, True)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(ConfigIssue("", f"cannot read the file: {err}", label, True)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as err:
        # Python and custom tags (!!python/object, !foo) land here: safe_load builds plain data only.
        raise ConfigError(ConfigIssue("", f"{_yaml_line(err)}{err.problem}; configs are plain YAML read with "
                                          "yaml.safe_load, which refuses Python and custom tags",
                                      label, True)) from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(ConfigIssue("", f"invalid YAML: {_yaml_line(err)}{problem}", label, True)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        sections = ", ".join(field.name for field in dataclasses.fields(Config))
        raise ConfigError(ConfigIssue("", f"the top level must be a mapping of sections ({sections}), "
                                          f"got {_type_name(data)}", label, True))
    _check_string_keys(data, "", label)
    return data


def _yaml_line(err: yaml.YAMLError) -> str:
    """``"line N: "`` for a YAML error that knows where it happened, else ``""``."""
    mark = getattr(err, "problem_mark", None)
    return f"line {mark.line + 1}: " if mark is not None else ""


def _check_string_keys(data: Mapping[Any, Any], prefix: str, label: str) -> None:
    """Refuse mapping keys that are not strings (YAML reads ``1:`` or ``yes:`` as int / bool keys)."""
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(ConfigIssue(_join(prefix, str(key)), f"keys must be strings, got {_describe(key)}",
                                          label, True))
        if isinstance(value, Mapping):
            _check_string_keys(value, _join(prefix, key), label)


def _load_tree(path_abs: str, label: str, chain: tuple[tuple[str, str], ...]) -> tuple[dict[str, Any], _Provenance]:
    """One file merged over its bases: the raw tree and the source of each of its keys.

    Args:
        chain: ``(real path, label)`` of the files including this one, this one last (cycle detection).
    """
    raw = _read_yaml_mapping(path_abs, label)
    merged: dict[str, Any] = {}
    provenance: _Provenance = {}
    including_dir = os.path.dirname(path_abs)
    for base_ref in _base_refs(raw, label):
        base_abs = os.path.abspath(os.path.join(including_dir, os.path.expanduser(base_ref)))
        base_real = os.path.realpath(base_abs)
        chain_reals = [real for real, _ in chain]
        if base_real in chain_reals:
            cycle = [chain_label for _, chain_label in chain[chain_reals.index(base_real):]]
            raise ConfigError(ConfigIssue(BASE_KEY, "inheritance cycle: " + " -> ".join(cycle + [cycle[0]]),
                                          label, True))
        if not os.path.exists(base_abs):
            raise ConfigError(ConfigIssue(BASE_KEY, f"cannot find {base_ref!r} (looked for {base_abs})", label, True))
        base_label = _display_path(base_abs)
        base_tree, base_provenance = _load_tree(base_abs, base_label, chain + ((base_real, base_label),))
        _merge(merged, provenance, base_tree, base_provenance, "")
    own = {key: value for key, value in raw.items() if key != BASE_KEY}
    _merge(merged, provenance, own, _provenance_of(own, _Source(label, including_dir), ""), "")
    return merged, provenance


def _base_refs(raw: Mapping[str, Any], label: str) -> list[str]:
    """The ``_base_`` entry of a file as a list of paths (one path or a list of them)."""
    refs = raw.get(BASE_KEY, [])
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not all(isinstance(ref, str) and ref for ref in refs):
        raise ConfigError(ConfigIssue(BASE_KEY, f"expected a path or a list of paths, got {_describe(refs)}",
                                      label, True))
    return refs


def _provenance_of(tree: Mapping[str, Any], source: _Source, prefix: str) -> _Provenance:
    """Every dotted key of ``tree`` (sections and leaves, not list elements) mapped to ``source``."""
    provenance: _Provenance = {}
    for key, value in tree.items():
        dotted = _join(prefix, key)
        provenance[dotted] = source
        if isinstance(value, Mapping):
            provenance.update(_provenance_of(value, source, dotted))
    return provenance


def _merge(target: dict[str, Any], target_provenance: _Provenance,
           top: Mapping[str, Any], top_provenance: _Provenance, prefix: str) -> None:
    """Merge ``top`` into the accumulator ``target``: mappings recursively, anything else replaces.

    ``target`` is a dict owned by the loader; values taken from ``top`` are deep-copied so that a
    loaded tree is never changed through the accumulator.
    """
    for key, value in top.items():
        dotted = _join(prefix, key)
        if dotted in top_provenance:
            target_provenance[dotted] = top_provenance[dotted]
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], target_provenance, value, top_provenance, dotted)
            continue
        target[key] = copy.deepcopy(value)
        # The old subtree is gone, and with it the sources of its keys.
        inner = dotted + "."
        for stale in [name for name in target_provenance if name.startswith(inner)]:
            del target_provenance[stale]
        target_provenance.update({name: source for name, source in top_provenance.items() if name.startswith(inner)})


# --------------------------------------------------------------------------------------------------
# Dotted overrides
# --------------------------------------------------------------------------------------------------

def _parse_override(text: str, source: str = OVERRIDE_SOURCE) -> tuple[list[str], Any]:
    """``"loss.xy=mse"`` -> ``(["loss", "xy"], "mse")``, the value parsed with ``yaml.safe_load``; an error
    names ``source`` as where the override came from."""
    key, equals, raw_value = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise ConfigError(ConfigIssue("", f"expected KEY=VALUE, got {text!r}", source, True))
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(ConfigIssue(key, "not a dotted key (an empty part between dots)", source, True))
    try:
        value = yaml.safe_load(raw_value)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(ConfigIssue(key, f"cannot parse the value {raw_value!r} as YAML: {problem}",
                                      source, True)) from None
    return parts, value


def _apply_override(tree: dict[str, Any], provenance: _Provenance, text: str,
                    source: str = OVERRIDE_SOURCE) -> None:
    """Set one dotted ``key=value`` in the raw tree, checking the key against the schema; ``source`` is what
    error messages name as having set it (``--set``, or e.g. a study file's ``axes.loss.mse``).

    Sections and lists missing from the tree are filled in from the schema defaults first, so that
    ``model.anchors.0=[12,16]`` works without any file setting ``model.anchors``.
    """
    parts, value = _parse_override(text, source)
    origin = _Source(source, os.getcwd())
    hint: Any = Config
    node: Any = tree  # the dict (section) or list in the tree that holds the current part
    for depth, part in enumerate(parts):
        parent, dotted = ".".join(parts[:depth]), ".".join(parts[:depth + 1])
        is_last = depth == len(parts) - 1
        if _is_dataclass_type(hint):
            fields = {field.name: field for field in dataclasses.fields(hint)}
            if part not in fields:
                raise ConfigError(_unknown_key_issue(dotted, hint, source))
            _expect_container(node, dict, parent, provenance)
            child_hint = _type_hints(hint)[part]
            if is_last:
                _merge(node, provenance, {part: value}, _provenance_of({part: value}, origin, parent), parent)
                return
            if part not in node:
                node[part] = {} if _is_dataclass_type(child_hint) else _default_value(fields[part])
            node = node[part]
        elif typing.get_origin(hint) is list:
            _expect_container(node, list, parent, provenance)
            if not part.isdigit():
                raise ConfigError(ConfigIssue(dotted, f"{parent} is a list; expected an index in 0..{len(node) - 1}",
                                              source, True))
            index = int(part)
            if index >= len(node):
                raise ConfigError(ConfigIssue(dotted, f"index {index} is out of range: {parent} has "
                                                      f"{len(node)} elements", source, True))
            (child_hint,) = typing.get_args(hint)
            if is_last:
                node[index] = copy.deepcopy(value)
                provenance[dotted] = origin
                return
            node = node[index]
        else:
            raise ConfigError(ConfigIssue(dotted, f"unknown key; {parent} is a {_hint_name(hint)} value, "
                                                  "not a section or a list", source, True))
        hint = child_hint


def _expect_container(node: Any, kind: type, dotted: str, provenance: _Provenance) -> None:
    """Refuse to descend into ``dotted`` when a file set it to something other than a mapping / list."""
    if not isinstance(node, kind):
        wanted = "a mapping" if kind is dict else "a list"
        source = _source_of(provenance, dotted)
        raise ConfigError(ConfigIssue(dotted, f"expected {wanted}, got {_describe(node)}",
                                      source.label if source else None))


# --------------------------------------------------------------------------------------------------
# Conversion to the dataclasses and checks
# --------------------------------------------------------------------------------------------------

class _Converter:
    """Convert a raw tree to schema dataclasses, collecting every problem instead of stopping at the first."""

    def __init__(self, provenance: _Provenance, default_dir: str) -> None:
        self.provenance = provenance
        self.default_dir = default_dir  # where a relative path taken from a schema default is resolved
        self.issues: list[ConfigIssue] = []

    def section(self, cls: type, tree: Mapping[str, Any], prefix: str) -> Any:
        """One dataclass from its mapping; missing keys take the schema default (converted the same way)."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        for key in tree:
            if key not in fields:
                source = self.provenance.get(_join(prefix, key))
                self.issues.append(_unknown_key_issue(_join(prefix, key), cls, source.label if source else None))
        hints = _type_hints(cls)
        issues_before = len(self.issues)
        values = {}
        for name, field in fields.items():
            if name in tree:
                raw = tree[name]
            else:  # converting defaults too makes `Config()` and a loaded config compare and hash alike
                raw = {} if _is_dataclass_type(hints[name]) else _default_value(field)
            values[name] = self.value(raw, hints[name], field.metadata, _join(prefix, name))
        return cls(**values) if len(self.issues) == issues_before else None

    def value(self, raw: Any, hint: Any, metadata: Mapping[str, Any], dotted: str) -> Any:
        """One value checked against its type hint and metadata; ``None`` (with an issue) when invalid."""
        if _is_dataclass_type(hint):
            if not isinstance(raw, Mapping):
                return self._fail(dotted, f"expected a mapping (the {hint.__name__} section), got {_describe(raw)}")
            return self.section(hint, raw, dotted)
        if typing.get_origin(hint) is list:
            if not isinstance(raw, list):
                return self._fail(dotted, f"expected {_hint_name(hint)}, got {_describe(raw)}")
            (item_hint,) = typing.get_args(hint)
            return [self.value(item, item_hint, metadata, f"{dotted}.{index}") for index, item in enumerate(raw)]
        if hint is bool:
            return raw if isinstance(raw, bool) else self._fail(dotted, f"expected bool, got {_describe(raw)}")
        if hint is int:
            # bool is a subclass of int, but `epochs: true` is a mistake, not 1.
            if not isinstance(raw, int) or isinstance(raw, bool):
                return self._fail(dotted, f"expected int, got {_describe(raw)}")
            return self._check_range(raw, raw, metadata, dotted)
        if hint is float:
            if not isinstance(raw, (int, float)) or isinstance(raw, bool):
                return self._fail(dotted, f"expected float, got {_describe(raw)}")
            try:
                number = float(raw)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                return self._fail(dotted, f"expected a finite float, got {_describe(raw)}")
            return self._check_range(number, raw, metadata, dotted)
        if hint is str:
            if not isinstance(raw, str):
                hint_text = "; quote it to make it a string" if isinstance(raw, (bool, int, float)) else ""
                return self._fail(dotted, f"expected str, got {_describe(raw)}{hint_text}")
            choices = metadata.get("choices")
            if choices and raw not in choices:
                return self._fail(dotted, f"{raw!r} is not one of {', '.join(choices)}")
            return self._resolve_path(raw, dotted) if metadata.get("path") else raw
        raise TypeError(f"{dotted}: the config loader does not support the type {hint!r}")

    def _check_range(self, number: float, raw: int | float, metadata: Mapping[str, Any], dotted: str) -> Any:
        """``number`` if inside the field's ``range`` metadata, else an issue quoting the value as written."""
        bounds = metadata.get("range")
        if bounds is None or number in metadata.get("also", ()):
            return number
        low, high, low_open, high_open = bounds
        too_low = low is not None and (number <= low if low_open else number < low)
        too_high = high is not None and (number >= high if high_open else number > high)
        if not (too_low or too_high):
            return number
        also = "".join(f" or {value:g}" for value in metadata.get("also", ()))
        return self._fail(dotted, f"must be {_range_text(low, high, low_open, high_open)}{also}, got {raw!r}")

    def _resolve_path(self, path: str, dotted: str) -> str:
        """An absolute path: relative ones against the folder of the file that set the key ("" stays "": unset)."""
        if not path:
            return path
        source = _source_of(self.provenance, dotted)
        base_dir = source.base_dir if source is not None else self.default_dir
        return os.path.abspath(os.path.join(base_dir, os.path.expanduser(path)))

    def _fail(self, dotted: str, message: str) -> None:
        source = _source_of(self.provenance, dotted)
        self.issues.append(ConfigIssue(dotted, message, source.label if source else None))
        return None


def _build_config(tree: Mapping[str, Any], provenance: _Provenance, default_dir: str) -> Config:
    """Convert the merged tree, run every section's ``check()``, and raise all problems found together."""
    converter = _Converter(provenance, default_dir)
    cfg = converter.section(Config, tree, "")
    if converter.issues:
        raise ConfigError(*converter.issues)
    issues = []
    for dotted, message in _cross_field_problems(cfg, ""):
        source = _source_of(provenance, dotted)
        issues.append(ConfigIssue(dotted, message, source.label if source else None))
    if issues:
        raise ConfigError(*issues)
    return cfg


def _cross_field_problems(section: Any, prefix: str) -> list[tuple[str, str]]:
    """``(full dotted key, message)`` from the ``check()`` of ``section`` and of every section inside it."""
    check = getattr(section, "check", None)
    problems = [(_join(prefix, key), message) for key, message in check()] if check is not None else []
    for field in dataclasses.fields(section):
        child = getattr(section, field.name)
        if dataclasses.is_dataclass(child):
            problems.extend(_cross_field_problems(child, _join(prefix, field.name)))
    return problems


def _to_plain(value: Any, hint: Any) -> Any:
    """A dataclass value as plain data, floats as floats (the canonical form for dumps and hashes)."""
    if _is_dataclass_type(hint):
        hints = _type_hints(hint)
        return {field.name: _to_plain(getattr(value, field.name), hints[field.name])
                for field in dataclasses.fields(hint)}
    if typing.get_origin(hint) is list:
        (item_hint,) = typing.get_args(hint)
        return [_to_plain(item, item_hint) for item in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------

def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved field types (schema.py uses ``from __future__ import annotations``: they are strings)."""
    return typing.get_type_hints(cls)


def _default_value(field: dataclasses.Field[Any]) -> Any:
    """A fresh copy of a field's schema default."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return copy.deepcopy(field.default)


def _source_of(provenance: _Provenance, dotted: str) -> _Source | None:
    """The source of a key; a list element (``model.anchors.0.1``) falls back to its list's source."""
    key = dotted
    while key not in provenance:
        parent, _, last = key.rpartition(".")
        if not parent or not last.isdigit():
            return None
        key = parent
    return provenance[key]


def _unknown_key_issue(dotted: str, section: type, source: str | None) -> ConfigIssue:
    """``unknown key; did you mean 'loss.xy'? (valid keys: ...)`` for a key the section does not have."""
    prefix, _, name = dotted.rpartition(".")
    valid = [field.name for field in dataclasses.fields(section)]
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        suggestion = _join(prefix, close[0])
    else:  # the right name in the wrong section, e.g. train.ignore_thresh for loss.ignore_thresh
        elsewhere = [key for key in _all_keys(Config, "") if key.rpartition(".")[2] == name]
        suggestion = elsewhere[0] if elsewhere else None
    hint = f"; did you mean {suggestion!r}?" if suggestion else ""
    return ConfigIssue(dotted, f"unknown key{hint} (valid keys: {', '.join(valid)})", source, True)


def _all_keys(cls: type, prefix: str) -> list[str]:
    """Every dotted key of the schema below ``cls``, sections included."""
    keys = []
    hints = _type_hints(cls)
    for field in dataclasses.fields(cls):
        dotted = _join(prefix, field.name)
        keys.append(dotted)
        if _is_dataclass_type(hints[field.name]):
            keys.extend(_all_keys(hints[field.name], dotted))
    return keys


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """``in (0, 1]``, ``>= 1``, ``< 0.5``: the allowed range as a message fragment."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}"


def _hint_name(hint: Any) -> str:
    """``float``, ``list[list[float]]``: a type hint as a message shows it."""
    return hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _describe(value: Any) -> str:
    """``str 'ten'``, ``bool True``, ``null``: a value with its type, shortened for a one-line message."""
    return "null" if value is None else f"{_type_name(value)} {_short_repr.repr(value)}"
