"""`cifar10 classify PATH...`: classify the images of files and folders, against a running
service (`--url`) or in this process (`--model DIR`, the service's own decoding and backend).

One row per image to standard output (or `-o FILE`), CSV or JSON Lines: path, label,
confidence, uncertain, top-k and the model version. A file the service refuses is reported on
standard error with its reason and the rest are still classified; a busy service (503, with
its Retry-After) or a timeout (504) is retried with backoff. The exit status is 0 only when
every file was classified.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

RETRIED = {503, 504}
FIELDS = ("path", "label", "confidence", "uncertain", "top_k", "model", "version")


@dataclass
class Outcome:
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def image_files(paths: Sequence[Path]) -> list[Path]:
    """The files named, and every file under the folders named (sorted, hidden ones skipped)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.parts)
            )
        else:
            found.append(path)
    return found


def chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Remote:
    """The service over HTTP: one request per chunk, a refused file dropped and the rest
    resent, 503 and 504 retried."""

    def __init__(self, url: str, api_key: str | None, top_k: int, retries: int) -> None:
        headers = {} if api_key is None else {"X-API-Key": api_key}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=120)
        self.top_k, self.retries = top_k, retries

    def classify(self, files: list[Path]) -> Outcome:
        outcome = Outcome()
        pending = list(files)
        while pending:
            response = self._post(pending)
            if response is None:
                outcome.errors += [(str(p), "the service stayed busy; gave up") for p in pending]
                return outcome
            body = _json(response)
            if response.status_code == 200:
                for path, answer in zip(pending, body["predictions"], strict=True):
                    outcome.rows.append(_row(path, answer, body["model"], body["version"]))
                return outcome
            error = body.get("error", {}) if isinstance(body, dict) else {}
            if not isinstance(error, dict):
                error = {}
            if error.get("code") == "too_many_parts" and len(pending) > 1:
                # More files than the service takes per request: send each half on its own.
                half = len(pending) // 2
                for part in (pending[:half], pending[half:]):
                    more = self.classify(part)
                    outcome.rows += more.rows
                    outcome.errors += more.errors
                return outcome
            culprit = error.get("file")
            names = [str(p) for p in pending]
            if culprit in names:  # that file alone is refused; send the others again
                outcome.errors.append((culprit, error.get("message", response.text)))
                pending = [p for p in pending if str(p) != culprit]
                continue
            message = error.get("message")
            reason = f"HTTP {response.status_code}: {message or response.text[:200]}"
            outcome.errors += [(name, reason) for name in names]
            return outcome
        return outcome

    def _post(self, files: list[Path]) -> httpx.Response | None:
        """The answer to one request, after up to `retries` waits on 503/504 and lost
        connections; None when it never stopped being busy."""
        parts = [("files", (str(p), p.read_bytes())) for p in files]
        for attempt in range(self.retries + 1):
            try:
                response = self.http.post("/predict", params={"top_k": self.top_k}, files=parts)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code not in RETRIED:
                return response
            if attempt < self.retries:
                time.sleep(_wait(response, attempt))
        return None


class Local:
    """The model in this process, with the service's decoding and backend: no server."""

    def __init__(self, model_dir: Path, top_k: int) -> None:
        from app.model import load_classifier, resolve_version_dir
        from app.settings import get_settings

        self.classifier = load_classifier(resolve_version_dir(model_dir))
        self.top_k = top_k
        self.max_pixels = get_settings().max_image_pixels  # the service's own limit

    def classify(self, files: list[Path]) -> Outcome:
        import numpy as np

        from app.preprocessing import ImageRejected, decode_image
        from app.serving import prediction

        outcome, images, kept = Outcome(), [], []
        for path in files:
            try:
                images.append(decode_image(path.read_bytes(), max_pixels=self.max_pixels))
                kept.append(path)
            except (ImageRejected, OSError) as exc:
                outcome.errors.append((str(path), str(exc)))
        if not kept:
            return outcome
        probabilities = self.classifier.predict(np.stack(images))
        labels, threshold = self.classifier.labels, self.classifier.uncertain_below
        for path, row in zip(kept, probabilities, strict=True):
            answer = prediction(str(path), row, labels, self.top_k, threshold).model_dump()
            outcome.rows.append(_row(path, answer, self.classifier.name, self.classifier.version))
        return outcome


def _wait(response: httpx.Response | None, attempt: int) -> float:
    """Retry-After when the service says it, else exponential backoff from 0.5 s."""
    if response is not None:
        try:
            return max(float(response.headers.get("retry-after", "")), 0.1)
        except ValueError:
            pass
    return min(0.5 * 2**attempt, 30.0)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}


def _row(path: Path, answer: dict[str, Any], model: str, version: int) -> dict[str, Any]:
    return {
        "path": str(path),
        "label": answer["label"],
        "confidence": round(answer["confidence"], 6),
        "uncertain": answer["uncertain"],
        "top_k": [(item["label"], round(item["probability"], 6)) for item in answer["top_k"]],
        "model": model,
        "version": version,
    }


class Writer:
    def __init__(self, out: TextIO, form: str) -> None:
        self.out, self.form = out, form
        self.csv = csv.DictWriter(out, FIELDS) if form == "csv" else None
        if self.csv is not None:
            self.csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if self.csv is None:
            self.out.write(json.dumps(row) + "\n")
        else:
            flat = row | {"top_k": " ".join(f"{label}:{p:.4f}" for label, p in row["top_k"])}
            self.csv.writerow(flat)
        self.out.flush()


def classify(args: argparse.Namespace, out: TextIO) -> int:
    files = image_files(args.paths)
    if not files:
        print("no files found", file=sys.stderr)
        return 1
    backend: Remote | Local = (
        Local(args.model, args.top_k)
        if args.model
        else Remote(args.url, args.api_key, args.top_k, args.retries)
    )
    writer = Writer(out, args.format)
    progress = _progress(len(files))
    errors = 0
    with ThreadPoolExecutor(1 if args.model else args.concurrency) as pool:
        for outcome in pool.map(backend.classify, chunks(files, args.batch)):
            for row in outcome.rows:
                writer.write(row)
            for path, reason in outcome.errors:
                print(f"error: {path}: {reason}", file=sys.stderr)
            errors += len(outcome.errors)
            progress(len(outcome.rows) + len(outcome.errors))
    print(f"{len(files) - errors} of {len(files)} files classified", file=sys.stderr)
    return 0 if errors == 0 else 1


def _progress(total: int):
    """A progress bar on a terminal; on anything else a plain line per request."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="image", file=sys.stderr)
        return bar.update
    done = 0

    def line(count: int) -> None:
        nonlocal done
        done += count
        print(f"{done}/{total} files", file=sys.stderr, flush=True)

    return line


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="cifar10", description=__doc__.split("\n\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("classify", help="classify image files and folders")
    run.add_argument("paths", nargs="+", type=Path, help="image files and folders (walked)")
    run.add_argument("--url", default="http://localhost:8000", help="the service")
    run.add_argument("--api-key", help="X-API-Key, when the service sets API_KEY")
    run.add_argument("--model", type=Path, help="classify in this process with this model")
    run.add_argument("--top-k", type=int, default=3, choices=range(1, 11), metavar="1..10")
    run.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    run.add_argument("-o", "--output", type=Path, help="write rows here, not to stdout")
    run.add_argument("--batch", type=int, default=16, help="images per request (default 16)")
    run.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    run.add_argument("--retries", type=int, default=8, help="per request, on 503/504")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.output is None:
        return classify(args, sys.stdout)
    with args.output.open("w", newline="") as out:
        return classify(args, out)


if __name__ == "__main__":
    raise SystemExit(main())
