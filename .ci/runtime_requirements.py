"""Print the installed, pinned closure of the service's runtime dependencies: the base ones
(OpenVINO serving) and the `tensorflow` extra the TensorFlow image serves with (not the train or
dev extras).

pip-audit then checks exactly what a deployment runs: `pip-audit --disable-pip --no-deps -r`.
"""

import re
from importlib.metadata import PackageNotFoundError, distribution


def closure(name: str, seen: dict[str, str]) -> None:
    try:
        dist = distribution(name)
    except PackageNotFoundError:  # a marker-excluded or optional dependency
        return
    key = dist.metadata["Name"].lower()
    if key in seen:
        return
    seen[key] = dist.version
    for requirement in dist.requires or []:
        if "extra ==" in requirement:
            continue
        closure(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0], seen)


pins: dict[str, str] = {}
closure("cifar10-service", pins)
closure("tensorflow", pins)  # the `tensorflow` extra: what INFERENCE_BACKEND=tensorflow runs
pins.pop("cifar10-service")
print("\n".join(f"{name}=={version}" for name, version in sorted(pins.items())))
