"""Just enough of a Dockerfile parser for the tests to read what the images really do.

Instructions with their continuation lines joined and comment lines dropped, grouped by stage;
a stage built `FROM` an earlier one inherits its ENV, USER, ENTRYPOINT, CMD and so on, as Docker
does. Global ARG defaults (before the first FROM) are substituted into FROM and COPY.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str  # an image reference, or the name of an earlier stage
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults declared in the stage


class Dockerfile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.global_args: dict[str, str] = {}
        self.stages: list[Stage] = []
        for ins in _instructions(path.read_text()):
            if ins.keyword == "FROM":
                words = ins.args.split()
                base = self.substitute(words[0])
                name = (
                    words[2]
                    if len(words) == 3 and words[1].upper() == "AS"
                    else str(len(self.stages))
                )
                self.stages.append(Stage(name, base))
            elif not self.stages:
                if ins.keyword != "ARG":
                    raise ValueError(f"{path}:{ins.line}: {ins.keyword} before FROM")
                self.global_args.update(_arg(ins.args))
            else:
                stage = self.stages[-1]
                stage.instructions.append(ins)
                if ins.keyword == "ARG":
                    stage.args.update(_arg(ins.args))

    def substitute(self, text: str, extra: dict[str, str] | None = None) -> str:
        values = {**self.global_args, **(extra or {})}
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m[1] or m[2]], text)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, oldest first."""
        stage = self.stage(name)
        names = {s.name for s in self.stages}
        return [*self.chain(stage.base), stage] if stage.base in names else [stage]

    def instructions(self, name: str, keyword: str) -> list[Instruction]:
        """`keyword` instructions that apply to stage `name`, inherited ones first."""
        return [i for s in self.chain(name) for i in s.instructions if i.keyword == keyword]

    def base_image(self, name: str) -> str:
        return self.chain(name)[0].base

    def env(self, name: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.instructions(name, "ENV"):
            words = shlex.split(ins.args)
            if "=" not in words[0]:  # legacy `ENV key value`
                out[words[0]] = " ".join(words[1:])
            else:
                out.update((k, v) for k, _, v in (w.partition("=") for w in words))
        return out

    def exec_form(self, name: str, keyword: str) -> list[str]:
        """The last ENTRYPOINT or CMD of the stage, which must be in exec (JSON) form."""
        found = self.instructions(name, keyword)
        if not found:
            return []
        value = json.loads(found[-1].args)
        assert isinstance(value, list), f"{keyword} must use the exec form"
        return [str(v) for v in value]

    def command(self, name: str) -> list[str]:
        """What the container runs: ENTRYPOINT followed by CMD."""
        return self.exec_form(name, "ENTRYPOINT") + self.exec_form(name, "CMD")

    def healthcheck(self, name: str) -> tuple[str, list[str]]:
        """(options, exec-form command) of the stage's HEALTHCHECK."""
        options, _, command = self.instructions(name, "HEALTHCHECK")[-1].args.partition("CMD")
        return options.strip(), json.loads(command)

    def copies(self, name: str) -> list[tuple[list[str], str, str | None]]:
        """The COPY instructions of stage `name` alone: (sources, destination, --from stage)."""
        stage = self.stage(name)
        return [self.copy_args(i, stage) for i in stage.instructions if i.keyword == "COPY"]

    def copy_args(self, ins: Instruction, stage: Stage) -> tuple[list[str], str, str | None]:
        words = [self.substitute(w, stage.args) for w in shlex.split(ins.args)]
        flags = {f: v for f, _, v in (w[2:].partition("=") for w in words if w[:2] == "--")}
        paths = [w for w in words if not w.startswith("--")]
        return paths[:-1], paths[-1], flags.get("from")


def _instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments (and parser directives) may sit inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(pending).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    if pending:
        raise ValueError("the Dockerfile ends inside a continued instruction")
    return out


def _arg(text: str) -> dict[str, str]:
    name, _, default = text.partition("=")
    return {name.strip(): default.strip()}
