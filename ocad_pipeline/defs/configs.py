"""Dagster run config derived from the dataclasses the library code takes (one source per config).

The simulator, the recorded-file reader, the trainers, the quality gate, the migration study and
the dataset splits each take a frozen dataclass (``SimulatorConfig``, ``RecordedConfig``,
``TCNParams``, ``IsolationForestParams``, ``GateTargets``, ``ComparisonSettings``,
``SplitConfig``) and stay testable without Dagster. Their run config is not written a second
time: :func:`config_from_dataclass` builds a ``dg.Config`` (or ``dg.ConfigurableResource``) base
class with one field per dataclass field (same name, the Dagster spelling of the type, same
default, the ``#:`` comment as its description in the UI), and ``to_dataclass()`` builds the
dataclass back from the values, by name.

A subclass may only

* add fields that exist for the pipeline alone, listed in ``pipeline_only`` (e.g.
  ``use_tuned_params``), and
* re-declare a dataclass field where the run config deliberately differs (another default, or a
  type Dagster cannot express such as ``str | int``), listed in ``overrides`` with the reason.

Anything else fails at import: a dataclass field the config lacks, a config field the dataclass
lacks, an undeclared re-declaration, or a declared one that is no longer needed.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Optional, Union

import dagster as dg
import pydantic

__all__ = ["DataclassConfigMixin", "config_from_dataclass", "config_type"]

_SCALARS = (bool, int, float, str)


def config_type(tp: Any) -> Any:
    """The Dagster config spelling of a dataclass field type, or None when it has none.

    ``tuple[X, ...]`` -> ``list[X]``, ``Mapping[str, X]`` -> ``dict[str, X]``, ``X | None`` ->
    ``Optional[X]``; scalars stay. Other unions (``str | int``) have no Dagster spelling.
    """
    if tp in _SCALARS:
        return tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            inner = config_type(rest[0])
            return None if inner is None else Optional[inner]
        return None
    if origin in (tuple, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return None
        inner = config_type(args[0]) if args else None
        return None if inner is None else list[inner]  # type: ignore[valid-type]
    if origin in (dict, Mapping):
        if len(args) == 2 and args[0] is str:
            inner = config_type(args[1])
            return None if inner is None else dict[str, inner]  # type: ignore[valid-type]
    return None


def _config_value(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_config_value(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _config_value(x) for k, x in v.items()}
    return v


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return _config_value(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _config_value(f.default_factory())
    return ...  # required


_DOC_LINE = re.compile(r"^\s*#:\s?(.*)$")
_FIELD_LINE = re.compile(r"^\s*(\w+)\s*:[^=]*(?:=.*?)?(?:#\s*(.*))?$")


def _field_docs(dc: type) -> dict[str, str]:
    """``#:`` comments above a field and ``# ...`` comments after it, by field name."""
    try:
        lines = inspect.getsource(dc).splitlines()
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    names = {f.name for f in dataclasses.fields(dc)}
    for line in lines:
        m = _DOC_LINE.match(line)
        if m:
            pending.append(m.group(1).strip())
            continue
        m = _FIELD_LINE.match(line)
        if m and m.group(1) in names:
            text = " ".join(pending + ([m.group(2).strip()] if m.group(2) else []))
            if text:
                docs[m.group(1)] = text
        pending = []
    return docs


class DataclassConfigMixin:
    """What :func:`config_from_dataclass` adds: the source, the declared differences, the way back."""

    source: ClassVar[type]
    #: run-config fields that the dataclass does not have -> why
    pipeline_only: ClassVar[Mapping[str, str]] = {}
    #: dataclass fields the run config re-declares (another default or type) -> why
    overrides: ClassVar[Mapping[str, str]] = {}

    def dataclass_values(self) -> dict[str, Any]:
        """The dataclass's keyword arguments; subclasses convert their ``overrides`` here."""
        hints = typing.get_type_hints(self.source)
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self.source):
            v = getattr(self, f.name)
            if isinstance(v, list) and typing.get_origin(hints[f.name]) is tuple:
                v = tuple(v)
            out[f.name] = v
        return out

    def to_dataclass(self) -> Any:
        """The dataclass built from these values, by field name (its own checks run)."""
        return self.source(**self.dataclass_values())

    @classmethod
    def check_parity(cls) -> None:
        """Raise TypeError when this config and its dataclass disagree (called at class creation)."""
        dc = cls.source
        hints = typing.get_type_hints(dc)
        dc_fields = {f.name: f for f in dataclasses.fields(dc)}
        model_fields = cls.model_fields  # type: ignore[attr-defined]
        problems = []
        missing = sorted(set(dc_fields) - set(model_fields))
        if missing:
            problems.append(f"fields of {dc.__name__} missing from the config: {missing}")
        extra = sorted(set(model_fields) - set(dc_fields) - set(cls.pipeline_only))
        if extra:
            problems.append(f"config fields {extra} are not in {dc.__name__} (add them there, or to pipeline_only with a reason)")
        stale = sorted(set(cls.pipeline_only) & set(dc_fields))
        if stale:
            problems.append(f"pipeline_only fields {stale} exist in {dc.__name__}: drop them from pipeline_only")
        for name, f in dc_fields.items():
            if name not in model_fields:
                continue
            mf = model_fields[name]
            want_type, want_default = config_type(hints[name]), _field_default(f)
            same = mf.annotation == want_type and (mf.default if not mf.is_required() else ...) == want_default
            if name in cls.overrides and same:
                problems.append(f"{name!r} is listed in overrides but matches {dc.__name__}: drop it from overrides")
            elif name not in cls.overrides and not same:
                problems.append(
                    f"{name!r} differs from {dc.__name__} ({mf.annotation} = {mf.default!r} vs {want_type} = {want_default!r}); "
                    "re-declare it only with a reason in overrides"
                )
        if problems:
            raise TypeError(f"{cls.__name__} vs {dc.__name__}: " + "; ".join(problems))

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)  # type: ignore[misc]
        generated = cls.__module__ == __name__ and cls.__name__.endswith("Fields")
        if not generated:  # the generated base itself is checked through its subclasses
            cls.check_parity()


def config_from_dataclass(dc: type, base: type = dg.Config) -> Any:
    """A ``base`` subclass (``dg.Config`` or ``dg.ConfigurableResource``) with one field per field
    of dataclass ``dc`` that has a Dagster spelling; subclass it (fields without one, e.g.
    ``str | int``, must be re-declared there and listed in ``overrides``)."""
    hints = typing.get_type_hints(dc)
    docs = _field_docs(dc)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(dc):
        tp = config_type(hints[f.name])
        if tp is None:
            continue
        fields[f.name] = (tp, pydantic.Field(default=_field_default(f), description=docs.get(f.name)))
    model = pydantic.create_model(  # type: ignore[call-overload,type-var]
        f"{dc.__name__}Fields",
        __base__=(DataclassConfigMixin, base),
        __module__=__name__,
        __doc__=f"The fields of {dc.__module__}.{dc.__qualname__}.",
        **fields,
    )
    model.source = dc
    return model
