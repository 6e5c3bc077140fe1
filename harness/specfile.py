"""Reading spec files safely: one-line ConfigErrors for every way a YAML file can be wrong.

`read_yaml` is what run specs (harness.config) and study specs (harness.studies) are read with:
safe loading (a `!!python/object` tag is an error, nothing is ever constructed or run), duplicate
keys refused, alias bombs and self-referencing specs stopped, binary/huge/empty files and folders
named as such.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A one-line, user-facing description of what is wrong with a run spec."""


MAX_SPEC_BYTES = 4 << 20  # a run or study spec is a small text file; anything bigger is the wrong file
MAX_SPEC_VALUES = 100_000  # after alias expansion: a "billion laughs" spec stops here instead of eating RAM


class _SpecLoader(yaml.SafeLoader):
    """yaml.safe_load (no Python tags, nothing constructed or run) that also refuses duplicate keys, which
    plain YAML resolves silently by keeping the last one (`rounds: 5` ... `rounds: 50` would run 50)."""


def _mapping_without_duplicates(loader: _SpecLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:
            continue  # unhashable: construct_mapping below raises its own error
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (first at line {first})",
                                                    key_node.start_mark)
    return loader.construct_mapping(node, deep=True)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _yaml_problem(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if "could not determine a constructor for the tag" in problem:
        tag = problem.split("tag", 1)[1].strip().replace("tag:yaml.org,2002:", "!!")
        problem = f"tag {tag} is not allowed: specs are plain YAML, nothing was constructed or run"
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _check_size(tree: Any, what: str) -> Any:
    """Count values as a walk sees them (aliases expand): refuse self-referencing or exploding specs."""
    stack, seen = [tree], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_SPEC_VALUES:
            raise ConfigError(f"{what}: more than {MAX_SPEC_VALUES:,} values once YAML aliases are expanded "
                              f"(self-referencing or exploding aliases?)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return tree


def read_yaml(path: str | Path, what: str = "spec file") -> Any:
    """A YAML file's content, or a one-line ConfigError naming the file: missing, a folder, too big, not
    UTF-8, empty, not valid YAML, a Python tag (never executed: safe loading), duplicate keys, alias bombs."""
    path = Path(path)
    name = repr(str(path))
    if path.is_dir():
        raise ConfigError(f"{what} {name} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} {name} does not exist")
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise ConfigError(f"{what} {name} is {size / 2**20:.1f} MiB; a spec is a small YAML text file "
                              f"(the wrong file?)")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {name} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                          f"{err.start}); is it a YAML file?") from None
    except OSError as err:
        raise ConfigError(f"{what} {name} cannot be read: {err.strerror or err}") from None
    try:
        tree = yaml.load(text, Loader=_SpecLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {name} is not valid YAML: {_yaml_problem(err)}") from None
    except RecursionError:
        raise ConfigError(f"{what} {name} nests too deeply") from None
    if tree is None:
        raise ConfigError(f"{what} {name} is empty")
    return _check_size(tree, f"{what} {name}")


def yaml_value(text: str, what: str) -> Any:
    """One YAML value (an override's right-hand side) read like a spec file."""
    try:
        return _check_size(yaml.load(text, Loader=_SpecLoader), what)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: the value is not valid YAML ({_yaml_problem(err)})") from None
