"""Print the serving image's pip requirements for one backend, from pyproject.toml.

    python3 image_requirements.py openvino     # the default, slim image: no TensorFlow
    python3 image_requirements.py tensorflow   # TensorFlow's CPU-only build (same module)

pyproject's base dependencies serve on OpenVINO; the tensorflow image adds TensorFlow's
CPU-only build from the `tensorflow` extra.
"""

import sys
import tomllib

BACKENDS = ("openvino", "tensorflow")

backend = sys.argv[1] if len(sys.argv) > 1 else "openvino"
if backend not in BACKENDS:
    sys.exit(f"BACKEND must be one of {BACKENDS}, not {backend!r}")
with open("pyproject.toml", "rb") as handle:
    project = tomllib.load(handle)["project"]
requirements = list(project["dependencies"])  # OpenVINO included
if backend == "tensorflow":
    requirements += [
        requirement.replace("tensorflow", "tensorflow-cpu", 1)
        for requirement in project["optional-dependencies"]["tensorflow"]
    ]
print("\n".join(requirements))
