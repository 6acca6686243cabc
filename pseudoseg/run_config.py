"""The run configuration as a run reads it: :class:`~pseudoseg.config.RunSettings` plus
``method``, the section of one of the registered methods, chosen by its ``name``.

:mod:`pseudoseg.config` declares the sections; the method section can only be checked
once the methods are registered, so validation is this second step, above the registry:
reading a YAML file (or a recipe by name), ``--method`` and ``--set``, the error that
names a wrong key, and the generated configuration reference.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from pseudoseg.config import (
    DataConfig,
    EvalConfig,
    MethodSection,
    ModelConfig,
    RunSettings,
    TrainConfig,
    apply_overrides,
    literal_words,
    yaml_boolean_words,
)
from pseudoseg.errors import UserError
from pseudoseg.methods.registry import DEFAULT_METHOD, get_method, method_sections
from pseudoseg.recipes import resolve_config_path

if TYPE_CHECKING:
    from pseudoseg.config import RunConfig
else:

    def __getattr__(name: str) -> Any:
        # RunConfig, the class run_config_class() builds once the methods are registered
        if name == "RunConfig":
            return run_config_class()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def run_config_class() -> type[RunSettings]:
    """The run configuration: :class:`RunSettings` plus ``method``, one of the registered
    methods' sections chosen by its ``name`` (built once, when first asked for).

    Loading a configuration calls it; ``pseudoseg.run_config.RunConfig`` is this class.
    """
    sections = method_sections()
    default = get_method(DEFAULT_METHOD).section
    choice = Annotated[Union[sections], Field(discriminator="name")] if len(sections) > 1 else sections[0]
    described = Field(default_factory=default, description="The training method: ``name`` picks it (``pseudoseg methods`` lists them), the other keys are its own.")
    model = create_model("RunConfig", __base__=RunSettings, __module__=__name__, method=(choice, described))
    model.__doc__ = "A run's configuration: every section of :class:`RunSettings`, and ``method``, the section of one registered method."
    return model



def config_from_dict(raw: dict[str, Any], *, origin: str = "configuration") -> RunConfig:
    run_config = run_config_class()
    try:
        return run_config.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # A section written for another method whose name was changed (--set method.name=X) says so first.
        error = next((e for e in errors if e["type"] == "extra_forbidden" and _foreign_method_key(raw, e["loc"])), errors[0])
        key = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-after"))
        # A discriminated union reports the chosen branch in the location
        # ("method.momentum.beta"); users write "method.beta".
        for name in method_names():
            key = key.replace(f"method.{name}.", "method.")
            if key == f"method.{name}":  # a check across keys of the method section
                key = "method"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
            if _foreign_method_key(raw, error["loc"]):
                chosen = raw["method"]["name"]
                message = f"not a key of method {chosen} (the section was written for another method); use --method {chosen} to replace it with {chosen}'s defaults"
        elif "input" in error and not isinstance(error["input"], dict) and error["type"] != "missing" and "got " not in message:
            message += f", got {_as_read(error['input'])}"
        # A check across keys names the key it is about: "encoder_weights: ..."
        # in the model section is reported as "model.encoder_weights: ...".
        named, sep, rest = message.partition(": ")
        if error["type"] == "value_error" and sep and named.replace(".", "_").isidentifier():
            key, message = (f"{key}.{named}" if key else named), rest
        if error["type"] == "union_tag_not_found":  # a method section without its name
            key, message = f"{key}.name", f"required, one of {', '.join(method_names())}"
        if error["type"] == "missing" and key == "data":
            key, message = "data.train", "required (the training folder); the data section is missing"
        raise UserError(f"{origin}: {key}: {message}") from None


def _foreign_method_key(raw: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    """Whether ``loc`` is a key of the method section that the chosen method lacks and another method has."""
    method = raw.get("method")
    if len(loc) != 3 or loc[0] != "method" or not isinstance(method, dict) or method.get("name") not in method_names():
        return False
    own = get_method(method["name"]).section
    return any(loc[2] in section.model_fields for section in method_sections() if section is not own)


def _as_read(value: Any) -> str:
    """A refused value as the YAML reader produced it, with why when YAML changed a word."""
    if isinstance(value, bool):
        words = yaml_boolean_words(value)
        shown = json.dumps(value)
        return f"{shown} (YAML reads unquoted {', '.join(words[:-1])} and {words[-1]} as {shown})"
    shown = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def read_config_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """The raw mapping of a YAML configuration (a file, or a recipe's name: :func:`pseudoseg.recipes.resolve_config_path`) and
    the name errors are reported under."""
    path = resolve_config_path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level")
    return loaded, str(path)


def switch_method(raw: dict[str, Any], name: str) -> tuple[dict[str, Any], str]:
    """``raw`` with its method section replaced by method ``name``'s defaults, keeping the keys
    the new method also has; and one line saying which keys were kept and which dropped."""
    if name not in method_names():
        raise UserError(f"--method {name}: no such method; registered: {', '.join(method_names())} (pseudoseg methods lists them)")
    section = get_method(name).section
    old = raw.get("method") or {}
    if not isinstance(old, dict):
        raise UserError(f"--method {name}: the configuration's method is not a section")
    kept, dropped = {}, []
    for key, value in old.items():
        if key == "name":
            continue
        if key in section.model_fields and _valid_in(section, name, key, value):
            kept[key] = value
        else:
            dropped.append(key)
    previous = old.get("name") or DEFAULT_METHOD
    line = f"--method {name}: method section of {previous} replaced by {name}'s defaults"
    line += f"; kept {', '.join(kept)}" if kept else "; no key kept"
    if dropped:
        line += f"; dropped {', '.join(dropped)}"
    return {**raw, "method": {"name": name, **kept}}, line


def _valid_in(section: type[MethodSection], name: str, key: str, value: Any) -> bool:
    """Whether ``key: value`` is a valid setting of method ``name`` (shared keys may take other values)."""
    try:
        section.model_validate({"name": name, key: value})
    except ValidationError:
        return False
    return True


def load_config(
    path: str | Path | None,
    overrides: list[str] | Mapping[str, Any] | None = None,
    *,
    method: str | None = None,
    report: Callable[[str], None] | None = None,
) -> RunConfig:
    """Read a YAML run configuration (a file, or a recipe's name), switch its method (``method``:
    :func:`switch_method`, its line given to ``report``), apply overrides (``key=value`` texts or a
    mapping of dotted keys, see :func:`apply_overrides`), validate."""
    raw, origin = read_config_file(path) if path is not None else ({}, "configuration")
    if method is not None:
        raw, line = switch_method(raw, method)
        if report is not None:
            report(line)
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, origin=origin)


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in get_args(annotation))
    text = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("<class '", "").replace("'>", "")
    return text.replace("NoneType", "None")


def method_names() -> tuple[str, ...]:
    """The ``method.name`` of every registered method, in the registry's order."""
    return tuple(literal for section in method_sections() for literal in literal_words(section.model_fields["name"].annotation))


def config_reference(*, built_in_only: bool = False) -> str:
    """The Markdown reference of every configuration key: the run's sections, then the section of
    every registered method (with ``built_in_only``, of the methods shipped with pseudoseg: the
    one in docs/configuration.md, which does not depend on the plug-ins installed where it is
    generated)."""
    methods = [(f"method.  (name: {' / '.join(literal_words(section.model_fields['name'].annotation))})", section, None) for section in method_sections(built_in_only=built_in_only)]


    def nested(prefix: str, model: type[BaseModel]) -> list[tuple[str, type[BaseModel], None]]:
        """A section and, after it, every section nested in it (``train.optim``, ``train.augment.strong``, ...)."""
        inner = [(f"{prefix}{name}.", type(field.default)) for name, field in model.model_fields.items() if isinstance(field.default, BaseModel)]
        return [(prefix, model, None), *(entry for key, section in inner for entry in nested(key, section))]

    sections = [
        ("", RunSettings, ("run_dir", "seed", "device")),
        *nested("data.", DataConfig),
        *nested("model.", ModelConfig),
        *nested("train.", TrainConfig),
        *nested("eval.", EvalConfig),
        *methods,
    ]
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for prefix, model, only in sections:
        key_prefix, _, note = prefix.partition("  ")
        for name, field in model.model_fields.items():
            if only is not None and name not in only:
                continue
            if isinstance(field.default, BaseModel) or name == "name" and note:
                continue
            default = "required" if field.is_required() else f"`{json_default(field.default)}`"
            meaning = " ".join((field.description or "").split()).replace("``", "`").replace("|", "\\|")
            if note and name == [n for n in model.model_fields if n != "name"][0]:
                meaning = f"*{note.strip('()')}*. {meaning}"
            lines.append(f"| `{key_prefix}{name}` | {_type_name(field.annotation).replace('|', 'or')} | {default} | {meaning} |")
    return "\n".join(lines)


def json_default(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return str(list(value))
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


REFERENCE_MARKERS = ("<!-- config-reference:start -->", "<!-- config-reference:end -->")


def update_reference(path: Path) -> None:
    """Rewrite the reference between the config-reference markers of a Markdown file
    (``docs/configuration.md``); a file without both markers is an error, left unchanged."""
    import re

    start, end = REFERENCE_MARKERS
    text = path.read_text(encoding="utf-8")
    pattern = re.escape(start) + ".*?" + re.escape(end)
    if not re.search(pattern, text, flags=re.S):
        raise SystemExit(f"{path}: no {start} ... {end} markers; the configuration reference lives in docs/configuration.md")
    block = f"{start}\n{config_reference(built_in_only=True)}\n{end}"
    path.write_text(re.sub(pattern, lambda _: block, text, count=1, flags=re.S), encoding="utf-8")


if __name__ == "__main__":
    import sys

    # python -m pseudoseg.run_config [docs/configuration.md]: print the reference, or update it in that page
    if len(sys.argv) > 1:
        update_reference(Path(sys.argv[1]))
    else:
        print(config_reference())
