"""Logs a machine can read: one JSON object per line."""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from app.contract import ModelLoadError

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# How a traceback's last line names the exception, wherever the class lives.
_MODEL_LOAD_ERROR = f"{ModelLoadError.__module__}.{ModelLoadError.__qualname__}:"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which process, when WORKERS > 1
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class AlreadyExplained(logging.Filter):
    """Drops uvicorn's traceback of a model that failed to load: the lifespan has logged the
    path and the reason in one line, and a page of stack frames only hides it."""

    def filter(self, record: logging.LogRecord) -> bool:
        lines = record.getMessage().rstrip().splitlines()
        return not (len(lines) > 1 and lines[-1].startswith(_MODEL_LOAD_ERROR))


def configure_logging(level: str) -> None:
    """JSON lines on stderr for our loggers and uvicorn's; replaces earlier handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(AlreadyExplained())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # app.access logs each request instead
