"""Generate docs/configuration.md from the profile models, so the reference cannot drift.

    python -m finetune_phi.docgen              # (re)write docs/configuration.md
    python -m finetune_phi.docgen --check      # exit 1 if the committed file is stale
    python -m finetune_phi.docgen --output -   # print it

Every key of a profile (`finetune_phi.settings.Profile` and the sections it is made of:
pydantic models and the trainer's dataclasses) becomes a table row: its dotted path (what
`--set` and `FINETUNE_PHI__...` take), type, default, what the committed profiles set, and
the description written next to the field. Tagged unions (`backend`, `data.source`) get one
table per `kind`. The output depends only on the code and configs/profiles/*.yaml.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from finetune_phi.settings import (
    DEFAULT_PROFILE,
    PROFILES_DIR,
    REPO_ROOT,
    Profile,
    available_profiles,
)

OUTPUT = REPO_ROOT / "docs" / "configuration.md"
_MISSING = object()


@dataclass(frozen=True)
class Key:
    path: str
    type: str
    default: str
    description: str
    annotation: Any


@dataclass(frozen=True)
class Section:
    path: str  # "" for the top level
    title: str
    intro: str
    keys: list[Key]
    kind: str | None = None  # the variant of a tagged union, e.g. "azure"


# --------------------------------------------------------------------------- introspection


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def _is_section(annotation: Any) -> bool:
    return _is_model(annotation) or (
        inspect.isclass(annotation) and dataclasses.is_dataclass(annotation)
    )


def _union_args(annotation: Any) -> tuple[Any, ...]:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _union_args(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return get_args(annotation)
    return ()


def _variants(annotation: Any) -> list[Any]:
    """The sections of a tagged union (`backend`, `data.source`), else []."""
    members = [a for a in _union_args(annotation) if a is not type(None)]
    return members if members and all(_is_section(m) for m in members) else []


def type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return type_name(get_args(annotation)[0])
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in get_args(annotation))
    members = _union_args(annotation)
    if members:
        named = [type_name(a) for a in members if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in members else "")
    if origin is tuple:
        return f"list of {type_name(get_args(annotation)[0])}"
    if origin is dict:
        return "mapping"
    if annotation is Path:
        return "path"
    if _is_section(annotation):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def render_value(value: Any) -> str:
    if value is _MISSING:
        return "required"
    return json.dumps(_plain(value), ensure_ascii=False, separators=(", ", ": "))


def _doc(cls: Any) -> str:
    text = inspect.getdoc(cls) or ""
    if cls.__doc__ is None or text.startswith(("A dataclass", "Usage docs")):
        return ""  # pydantic/dataclass boilerplate, not ours
    return " ".join(text.split("\n\n")[0].split())


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def constraints(metadata: list[Any]) -> str:
    """pydantic's field constraints in words: `>= 0, <= 50`, `at least 1 item(s)`, a pattern."""
    parts = []
    for item in metadata:
        for attribute, symbol in _BOUNDS.items():
            bound = getattr(item, attribute, None)
            if bound is not None:
                parts.append(f"{symbol} {bound}")
        if getattr(item, "min_length", None) is not None:
            parts.append(f"at least {item.min_length} item(s)")
        if getattr(item, "max_length", None) is not None:
            parts.append(f"at most {item.max_length} item(s)")
        if getattr(item, "pattern", None):
            parts.append(f"matches `{item.pattern}`")
    return ", ".join(parts)


def fields_of(cls: Any) -> Iterator[tuple[str, Any, Any, str]]:
    """(name, annotation, default, description) of a pydantic model or a dataclass."""
    if _is_model(cls):
        for name, info in cls.model_fields.items():
            if info.is_required():
                default = _MISSING
            elif info.default_factory is not None:
                default = info.default_factory()
            else:
                default = info.default
            yield name, info.annotation, default, info.description or ""
        return
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            default = _MISSING
        text = str(item.metadata.get("help", "")).replace("%%", "%")
        yield item.name, hints[item.name], default, text


def collect(cls: Any, path: str = "", title: str = "", kind: str | None = None) -> list[Section]:
    """The section for `cls` at `path`, then its sub-sections, depth first."""
    keys: list[Key] = []
    below: list[Section] = []
    for name, annotation, default, description in fields_of(cls):
        key = f"{path}.{name}" if path else name
        variants = _variants(annotation)
        if variants:
            for variant in variants:
                tag = get_args(fields_of_annotation(variant, "kind"))[0]
                below += collect(variant, key, f"`{key}` (kind: {tag})", kind=tag)
            kinds = " or ".join(
                json.dumps(get_args(fields_of_annotation(v, "kind"))[0]) for v in variants
            )
            keys.append(
                Key(key, f"section (kind {kinds})", render_value(default), description, annotation)
            )
            continue
        if _is_section(annotation):
            below += collect(annotation, key, f"`{key}`")
            keys.append(
                Key(key, "section", "see below", description or _doc(annotation), annotation)
            )
            continue
        limits = constraints(cls.model_fields[name].metadata) if _is_model(cls) else ""
        shown = type_name(annotation) + (f", {limits}" if limits else "")
        keys.append(Key(key, shown, render_value(default), description, annotation))
    section = Section(path, title or "Top level", _doc(cls), keys, kind)
    return [section, *below]


def fields_of_annotation(cls: Any, name: str) -> Any:
    for field_name, annotation, _, _ in fields_of(cls):
        if field_name == name:
            return annotation
    raise KeyError(name)


# --------------------------------------------------------------------------- rendering


def _lookup(data: Any, path: str) -> Any:
    node = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def profile_values() -> dict[str, Any]:
    """The committed profiles' raw YAML, the default profile first."""
    names = sorted(available_profiles(), key=lambda n: (n != DEFAULT_PROFILE, n))
    return {
        name: yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text()) or {} for name in names
    }


def render() -> str:
    profiles = profile_values()
    names = list(profiles)
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m finetune_phi.docgen` from the profile models "
        "(finetune_phi/settings.py, finetune_phi/chat_data/config.py, trainer/config.py) and "
        "configs/profiles/*.yaml. Do not edit by hand: tests/test_docs.py fails when it is "
        "stale. -->",
        "",
        "A run is described by a **profile**, a YAML file in `configs/profiles/` ("
        + ", ".join(f"`{n}`" for n in names)
        + "). Profiles are validated strictly: an unknown key or a wrong type is an error that "
        "names the key. Any key below can be overridden without editing a file:",
        "",
        "```bash",
        "finetune-phi run --set training.learning_rate=1e-4 --set rollout.keep_previous=true",
        "FINETUNE_PHI__TRAINING__LEARNING_RATE=1e-4 finetune-phi config show",
        "finetune-phi config show --profile azure   # the resolved profile",
        "finetune-phi config schema                 # the same as JSON schema, for editors",
        "```",
        "",
        "Precedence: profile file < `FINETUNE_PHI__A__B` environment variables < `--set a.b=value`"
        ". Values are read as JSON where they parse (`3`, `1e-4`, `true`, `[10, 100]`), as text "
        "otherwise. A section with a `kind` (`backend`, `data.source`) is replaced, not merged, "
        "when the kind changes.",
        "",
        "Columns: **key** is the dotted path `--set` takes; **default** applies when no profile "
        "sets the key; "
        + ", ".join(f"**{n}**" for n in names)
        + " show what the committed profiles set (empty: the default).",
    ]
    for section in collect(Profile):
        lines += ["", f"## {section.title}", ""]
        if section.intro:
            lines += [section.intro, ""]
        header = ["key", "type", "default", *names, "description"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for key in section.keys:
            values = []
            for name in names:
                data = profiles[name]
                own_kind = _lookup(data, f"{section.path}.kind") if section.path else None
                value = _lookup(data, key.path)
                if section.kind is not None and own_kind != section.kind:
                    value = _MISSING
                if value is _MISSING or isinstance(value, Mapping):
                    values.append("")
                else:
                    values.append(f"`{_cell(render_value(value))}`")
            cells = [
                f"`{key.path}`",
                _cell(key.type),
                key.default
                if key.default in ("see below", "required")
                else f"`{_cell(key.default)}`",
                *values,
                _cell(key.description),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_phi.docgen",
        description="Write docs/configuration.md from the profile models.",
    )
    parser.add_argument("--output", default=str(OUTPUT), help="file to write, or - for stdout")
    parser.add_argument(
        "--check", action="store_true", help="only compare: exit 1 if the file is stale"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    target = Path(args.output)
    if args.check:
        current = target.read_text(encoding="utf-8") if target.is_file() else ""
        if current != text:
            print(f"{target} is stale: run `python -m finetune_phi.docgen`", file=sys.stderr)
            return 1
        print(f"{target} is up to date")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
