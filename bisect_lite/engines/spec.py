"""Engine specs: the strings users type to name an engine.

Grammar (one way for every engine):
    SPEC    := NAME | NAME ":" ITEM ("," ITEM)*  |  "cmd:" TEMPLATE
    ITEM    := WORD | KEY "=" VALUE
    NAME, WORD, KEY := [A-Za-z0-9_.+-]+      VALUE := any text without ","
Examples: `paddle`, `paddle-opt:threads=2`, `fp16:skip=softmax+layer_norm`, `lite:opencl,precision=fp32,adb`.
After `cmd:` everything is the command template, verbatim (it may contain commas and colons).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bisect_lite.errors import InputError

_TOKEN = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class EngineSpec:
    name: str
    words: tuple[str, ...] = ()
    options: tuple[tuple[str, str], ...] = ()

    def option(self, key: str, default: str | None = None) -> str | None:
        return dict(self.options).get(key, default)

    def __str__(self) -> str:
        if self.name == "cmd":
            return f"cmd:{self.option('template', '')}"
        items = list(self.words) + [f"{k}={v}" for k, v in self.options]
        return self.name + (":" + ",".join(items) if items else "")


def parse_spec(text: str) -> EngineSpec:
    text = text.strip()
    if not text:
        raise InputError("empty engine spec; expected NAME or NAME:OPTIONS (see `bisect-lite engines`)")
    name, sep, rest = text.partition(":")
    if name == "cmd":
        if not rest.strip():
            raise InputError(
                "engine spec 'cmd:' needs a command template, e.g. cmd:./run.sh {model_dir} {inputs} {outputs}"
            )
        return EngineSpec("cmd", (), (("template", rest),))
    if not _TOKEN.match(name):
        raise InputError(f"engine spec {text!r}: bad engine name {name!r}")
    if sep and not rest:
        raise InputError(f"engine spec {text!r}: nothing after ':'")
    words: list[str] = []
    options: dict[str, str] = {}
    for item in rest.split(",") if rest else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not key or not _TOKEN.match(key):
            raise InputError(f"engine spec {text!r}: cannot parse {item!r} (expected WORD or KEY=VALUE)")
        if eq:
            if key in options:
                raise InputError(f"engine spec {text!r}: option {key!r} given twice")
            options[key] = value.strip()
        else:
            words.append(key)
    return EngineSpec(name, tuple(words), tuple(sorted(options.items())))
