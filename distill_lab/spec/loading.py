"""Specs from YAML: `--set` overrides, `${VAR}` interpolation, one-line validation errors, `resolve`.

Validation happens once, here, at the edge. Everything past `resolve()` receives a frozen
`RunConfig`, never a raw dict.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from distill_lab.errors import SpecError
from distill_lab.spec.schema import (RUN_SECTIONS, CategoricalParam, FloatParam, GridParam, IntParam,
                                     MappingStrategyParam, RunConfig, StudySpec)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, where: str = "") -> Any:
    """Replace ${VAR} / ${VAR:-default} in every string of a YAML tree."""
    if isinstance(value, dict):
        return {key: interpolate(item, f"{where}.{key}" if where else str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise SpecError(f"{where}: environment variable {name} is not set (write ${{{name}:-default}} for a default)")

    return _VAR.sub(substitute, value)


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", parsed value). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected dotted.key=value, e.g. distill.temperature=8")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
        raise SpecError(f"--set {text!r}: {key!r} is not a dotted key like training.epochs")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise SpecError(f"--set {text!r}: value is not valid YAML ({err.__class__.__name__})") from err
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any, *, create: bool = True) -> None:
    """Set tree[a][b][c] = value for key 'a.b.c'; intermediate dicts are created when allowed."""
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            if not create:
                raise SpecError(f"{key}: no section {'.'.join(parts[: depth + 1])!r} in the spec")
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise SpecError(f"{key}: {'.'.join(parts[: depth + 1])!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    location = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-"))
    # Discriminated unions and validators put type tags in the location; they only confuse users.
    location = re.sub(r"\.(float|int|categorical|grid|mapping_strategy|monotone_mapping|str|list\[int\]|literal\[[^\]]*\])(?=\.|$)", "", location)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see the sections in studies/quickstart.yaml)"
    elif first["type"] == "literal_error":
        message = f"got {first.get('input')!r}; {message.lower()}"
    elif "input" in first and not isinstance(first["input"], dict) and first["type"] not in ("missing", "value_error"):
        message = f"{message} (got {first['input']!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    where = f"{location}: " if location else ""
    return f"{source}: {where}{message}{more}"


def _sample_value(param: Any) -> Any:
    """A representative value for a search parameter, used to check that its path exists."""
    if isinstance(param, (FloatParam, IntParam)):
        return param.low
    if isinstance(param, CategoricalParam):
        return param.choices[0]
    if isinstance(param, GridParam):
        return param.values[0]
    if isinstance(param, MappingStrategyParam):
        return {"strategy": param.choices[0]}
    return {"strategy": "uniform"}


def load_raw(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}:{line} invalid YAML ({getattr(err, 'problem', err)})") from err
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not a UTF-8 text file") from err
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec must be a mapping with sections name, data, teacher, ...")
    return raw


def parse_spec(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = "spec") -> StudySpec:
    tree = copy.deepcopy(raw)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    written = copy.deepcopy(tree)
    tree = interpolate(tree)
    try:
        spec = StudySpec.model_validate(tree)
    except ValidationError as err:
        raise SpecError(_format_validation_error(err, source)) from None
    spec.keep_written(written)
    # Search-space paths must point at real config fields: resolve once with sample values.
    for path, param in spec.study.search_space.items():
        try:
            resolve(spec, {path: _sample_value(param)})
        except SpecError as err:
            raise SpecError(f"{source}: study.search_space {path!r}: {err}") from None
    return spec


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read a YAML spec, apply --set overrides and ${VAR} interpolation, validate."""
    return parse_spec(load_raw(path), overrides, source=str(path))


def resolve(spec: StudySpec, params: dict[str, Any] | None = None) -> RunConfig:
    """Fill sampled values (dotted keys) into the spec's run sections -> frozen RunConfig."""
    tree = spec.model_dump(mode="json", include=set(RUN_SECTIONS) | {"name"})
    for key, value in (params or {}).items():
        _check_existing_path(tree, key)
        set_dotted(tree, key, value, create=False)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise SpecError(_format_validation_error(err, "resolved config")) from None


def _check_existing_path(tree: dict[str, Any], key: str) -> None:
    # model_dump includes every field (None when unset), so a key that is absent is a typo.
    parts = key.split(".")
    if parts[0] not in RUN_SECTIONS:
        raise SpecError(f"{key}: unknown path; must start with one of {', '.join(RUN_SECTIONS)}")
    node: Any = tree
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise SpecError(f"{key}: unknown path (no field {'.'.join(parts[: depth + 1])!r})")
        node = node[part]
