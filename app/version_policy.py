"""Which versions of a model folder serve: TF Serving's model version policy, as one setting."""

from __future__ import annotations

import re
from dataclasses import dataclass

_POLICY = re.compile(r"^(?:latest(?::(?P<latest>\d+))?|all|specific:(?P<specific>\d+(?:,\d+)*))$")


@dataclass(frozen=True)
class VersionPolicy:
    """`latest[:N]` (the N highest loadable), `all`, or `specific:1,3`, as TF Serving's."""

    latest: int | None = 1  # None: every allowed version
    specific: frozenset[int] | None = None

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        match = _POLICY.match(text.strip().lower())
        if match is None or match["latest"] == "0":
            raise ValueError(
                f"'{text}' is not a version policy: use latest, latest:N, all or specific:1,2"
            )
        if match["specific"]:
            return cls(
                latest=None, specific=frozenset(int(v) for v in match["specific"].split(","))
            )
        if text.strip().lower() == "all":
            return cls(latest=None)
        return cls(latest=int(match["latest"] or 1))

    def __str__(self) -> str:
        if self.specific is not None:
            return "specific:" + ",".join(str(v) for v in sorted(self.specific))
        return "all" if self.latest is None else f"latest:{self.latest}"

    def allows(self, version: int) -> bool:
        return self.specific is None or version in self.specific
