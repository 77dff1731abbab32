"""Print the serving image's pip requirements for one backend, from pyproject.toml.

    python3 image_requirements.py openvino     # the default, slim image: no TensorFlow
    python3 image_requirements.py tensorflow   # TensorFlow's CPU-only build (same module)

The runtime dependencies stay pyproject's; only the runtime under the SavedModel changes.
"""

import sys
import tomllib

BACKENDS = ("openvino", "tensorflow")

backend = sys.argv[1] if len(sys.argv) > 1 else "openvino"
if backend not in BACKENDS:
    sys.exit(f"BACKEND must be one of {BACKENDS}, not {backend!r}")
with open("pyproject.toml", "rb") as handle:
    project = tomllib.load(handle)["project"]
requirements = []
for requirement in project["dependencies"]:
    if requirement.startswith("tensorflow"):
        if backend == "openvino":
            continue
        requirement = requirement.replace("tensorflow", "tensorflow-cpu", 1)
    requirements.append(requirement)
if backend == "openvino":
    requirements += project["optional-dependencies"]["openvino"]
print("\n".join(requirements))
