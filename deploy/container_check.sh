#!/usr/bin/env bash
# Builds the project's Dockerfile and checks the image without a Docker engine:
#   1. a local base image: a Debian rootfs with python3 made by debootstrap, committed by buildah
#      (no image registry is needed);
#   2. `buildah bud` of the Dockerfile with BASE_IMAGE set to it;
#   3. the image's own command started with `buildah run` on host networking; /health and
#      /predict must answer, from the backend the image was built for.
# BACKEND=openvino (default: the slim image CI builds) or BACKEND=tensorflow (on request).
# Needs root, buildah, debootstrap and curl.  Usage: [BACKEND=...] bash deploy/container_check.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-18080}
BACKEND=${BACKEND:-openvino}
BASE=localhost/debian-python:bookworm
IMAGE=localhost/cifar10-classifier:check-$BACKEND
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
started=$(date +%s)
log() { echo "[container-check +$(( $(date +%s) - started ))s] $*"; }

if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  log "debootstrap a Debian bookworm rootfs with python3 as $BASE"
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$mnt" "$MIRROR" >/dev/null
  rm -rf "$mnt"/var/cache/apt/archives/*.deb "$mnt"/var/lib/apt/lists/*
  buildah umount "$ctr" >/dev/null
  buildah config --env LANG=C.UTF-8 "$ctr"
  buildah commit --quiet "$ctr" "$BASE" >/dev/null
  buildah rm "$ctr" >/dev/null
fi

log "buildah bud the Dockerfile FROM $BASE"
# HTTPS inside the build needs the host's CA bundle; pip is told where it is by a mounted config,
# so the Dockerfile itself stays as a user would build it.
pipconf=$(mktemp)
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$pipconf"
buildah bud --quiet --isolation chroot --format docker --network host \
  --build-arg BASE_IMAGE="$BASE" --build-arg BACKEND="$BACKEND" \
  -v /etc/ssl/certs:/etc/ssl/certs:ro -v "$pipconf":/etc/pip.conf:ro \
  -t "$IMAGE" . >/dev/null
rm -f "$pipconf"
log "image built: $(buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE")"

log "start the image's command with buildah run (host network, port $PORT)"
buildah inspect --type image "$IMAGE" | python3 -c '
import json, sys
config = json.load(sys.stdin)["Docker"]["config"]
assert config["Cmd"] == ["python3", "-m", "app"], config["Cmd"]
assert config["User"] == "app", "the image must run as the non-root user"
assert "/health" in " ".join(config["Healthcheck"]["Test"]), "no HEALTHCHECK on /health"
'
server=""
serverlog=$(mktemp)
ctr=$(buildah from "$IMAGE")
cleanup() {
  status=$?
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true  # buildah run stops the container's process
  fi
  [ "$status" -eq 0 ] || { echo "--- server log"; cat "$serverlog"; }
  buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -f "$serverlog"
}
trap cleanup EXIT
buildah run --isolation chroot --network host --user app --env PORT="$PORT" "$ctr" \
  -- python3 -m app > "$serverlog" 2>&1 &
server=$!
for _ in $(seq 1 180); do
  curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo "the container exited"; exit 1; }
  sleep 1
done
health=$(curl -fsS "http://127.0.0.1:$PORT/health"); echo "$health"
echo "$health" | python3 -c "import json, sys; b = json.load(sys.stdin)['backend']; assert b == '$BACKEND', b"
python3 - "$PORT" <<'PY'
import io, json, sys, urllib.request
from pathlib import Path
png = next(Path("tests/fixtures/cifar10").glob("*_cat.png")).read_bytes()
boundary = "check"
body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="cat.png"\r\n'
        f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/predict", data=body,
    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
answer = json.load(urllib.request.urlopen(request, timeout=30))
print(json.dumps(answer["predictions"][0]["top_k"]))
assert answer["predictions"][0]["filename"] == "cat.png"
PY
if [ "$BACKEND" = openvino ]; then
  # The slim image is the lean install: no TensorFlow in it, so none can be imported at start.
  buildah run --isolation chroot "$ctr" -- python3 -c \
    "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)" \
    || { echo "TensorFlow is installed in the slim image"; exit 1; }
  log "slim image: no TensorFlow installed"
fi
log "container check passed"
