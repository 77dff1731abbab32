"""The model repository: which versions of the model folder serve, and swapping them while serving.

As in TF Serving: a version policy picks among the integer version folders; a poll loads the new
ones off the serving path (load, warm up, check), swaps them in at once, and unloads the versions
that left the policy after their in-flight requests finish. A version that fails to load is
refused with one log line and never displaces a good one; it is tried again only if its files
change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.batcher import Batcher
from app.contract import is_version_name
from app.model import Classifier, ModelLoadError
from app.version_policy import VersionPolicy

logger = logging.getLogger(__name__)


class VersionNotFound(LookupError):
    def __init__(self, version: int, loaded: list[int]) -> None:
        super().__init__(f"version {version} is not loaded (loaded: {loaded})")
        self.version = version


@dataclass(eq=False)
class ServedVersion:
    """A loaded version: its model and its batcher, with the requests that hold it."""

    classifier: Classifier
    batcher: Batcher
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def version(self) -> int:
        return self.classifier.version


@dataclass(frozen=True)
class VersionState:
    """One version folder as the repository index shows it: READY, or UNAVAILABLE and why."""

    version: str  # the folder's name ("" for MODEL_DIR itself when it was never loaded)
    state: str
    reason: str = ""


@dataclass(frozen=True)
class RepositoryEvent:
    """What a poll did, for metrics and logs: `loaded`, `refused` or `unloaded`."""

    kind: str
    version: int | None
    path: Path
    reason: str = ""


Loader = Callable[[Path], Classifier]
BatcherFactory = Callable[[Classifier], Batcher]


class ModelRepository:
    """Owns every loaded version; a route holds one with `acquire` and `release` for
    the length of a request."""

    def __init__(
        self,
        path: Path,
        *,
        policy: VersionPolicy,
        load: Loader,
        make_batcher: BatcherFactory,
        on_event: Callable[[RepositoryEvent], None] | None = None,
    ) -> None:
        self.path = path
        self.policy = policy
        self._load = load
        self._make_batcher = make_batcher
        self._on_event = on_event
        # Both replaced whole at a swap, never mutated: a request sees the old set or the new.
        self._by_folder: dict[int, ServedVersion] = {}  # folder's version (-1: MODEL_DIR itself)
        self._served: dict[int, ServedVersion] = {}  # metadata's version
        self._refused: dict[int, tuple[int, ...]] = {}  # version -> fingerprint when it failed
        self._refusals: dict[int, str] = {}  # version -> why it failed, for the index
        self._unloading: set[asyncio.Task[None]] = set()
        self._poll_lock = asyncio.Lock()
        self._last_refusal: ModelLoadError | None = None
        self.name: str | None = None

    # -- serving side ------------------------------------------------------------------------

    @property
    def versions(self) -> list[int]:
        """Loaded versions, highest first."""
        return sorted(self._served, reverse=True)

    def get(self, version: int | None = None) -> ServedVersion:
        """The given version, or the default (the highest loaded)."""
        served = self._served
        if version is None:
            if not served:
                raise VersionNotFound(0, [])
            return served[max(served)]
        if version not in served:
            raise VersionNotFound(version, sorted(served))
        return served[version]

    def acquire(self, version: int | None = None) -> ServedVersion:
        """Hold a version for one request; it is not unloaded until every hold is released."""
        served = self.get(version)
        served.in_flight += 1
        served.idle.clear()
        return served

    def release(self, served: ServedVersion) -> None:
        served.in_flight -= 1
        if served.in_flight == 0:
            served.idle.set()

    @property
    def queued_images(self) -> int:
        return sum(served.batcher.queued_images for served in self._served.values())

    def index(self) -> list[VersionState]:
        """Every version folder now, highest first: READY when it serves, else UNAVAILABLE
        and why (refused, left out by the policy, unloaded, or not polled yet)."""
        states = []
        for version in sorted(self._scan(), reverse=True):
            served = self._by_folder.get(version)
            name = str(version) if version != -1 else str(served.version if served else "")
            if served is not None:
                states.append(VersionState(name, "READY"))
                continue
            if version in self._refused:
                reason = f"refused: {self._refusals.get(version, 'it failed to load')}"
            elif not self._by_folder:
                reason = "unloaded"
            elif not self.policy.allows(version) or version < min(self._by_folder):
                reason = f"not chosen by MODEL_VERSION_POLICY={self.policy}"
            else:
                reason = "not loaded yet: the next poll or a load does"
            states.append(VersionState(name, "UNAVAILABLE", reason))
        return states

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """The first load; with nothing servable, fail as loading that folder alone would."""
        if not self.path.is_dir():
            raise ModelLoadError(self.path, "no such directory")
        await self.poll()
        if self._served:
            return
        if not self._refused:
            raise ModelLoadError(
                self.path, "no saved_model.pb and no integer version folder inside"
            )
        raise self._last_refusal or ModelLoadError(self.path, "no version could be loaded")

    async def poll(self) -> list[RepositoryEvent]:
        """Bring the loaded versions in line with the folder and the policy; safe to call often."""
        async with self._poll_lock:
            events: list[RepositoryEvent] = []
            available = self._scan()
            for version in list(self._refused):  # a refused version that changed is retried
                if available.get(version) != self._refused[version]:
                    del self._refused[version]
            wanted: dict[int, ServedVersion] = {}
            for version in sorted(available, reverse=True):
                if self.policy.latest is not None and len(wanted) == self.policy.latest:
                    break
                if not self.policy.allows(version) or version in self._refused:
                    continue
                served = self._by_folder.get(version) or await self._try_load(
                    version, available[version], events
                )
                if served is not None:
                    wanted[version] = served
            if not wanted and self._served:
                # Nothing in the folder is servable now (all removed or broken): keep what serves.
                wanted = self._by_folder
            leaving = [s for version, s in self._by_folder.items() if version not in wanted]
            self._by_folder = wanted
            self._served = {served.version: served for served in wanted.values()}
            for served in leaving:
                self._unload_later(served)
            for event in events:
                self._emit(event)
            return events

    async def unload(self) -> None:
        """Stop serving every version; each is unloaded once its in-flight requests finish."""
        async with self._poll_lock:
            leaving = list(self._by_folder.values())
            self._by_folder, self._served = {}, {}
            for served in leaving:
                self._unload_later(served)

    async def close(self) -> None:
        """Stop serving: every batcher finishes its queued work. After a poll that is loading a
        version, not beside it: that version's batcher would outlive the close."""
        async with self._poll_lock:
            leaving = list(self._by_folder.values())
            self._by_folder, self._served = {}, {}
        await asyncio.gather(*(served.batcher.stop() for served in leaving), *self._unloading)

    def _scan(self) -> dict[int, tuple[int, ...]]:
        """Version -> fingerprint of its files; a version folder given directly is the only one."""
        if (self.path / "saved_model.pb").is_file():
            return {-1: _fingerprint(self.path)}
        try:
            children = list(self.path.iterdir())
        except OSError:
            return {}
        return {
            int(child.name): _fingerprint(child)
            for child in children
            if is_version_name(child.name) and child.is_dir()
        }

    def _version_dir(self, version: int) -> Path:
        return self.path if version == -1 else self.path / str(version)

    async def _try_load(
        self, version: int, fingerprint: tuple[int, ...], events: list[RepositoryEvent]
    ) -> ServedVersion | None:
        path = self._version_dir(version)
        try:
            classifier = await asyncio.to_thread(self._load, path)
            self._check_identity(classifier, version)
        except ModelLoadError as exc:
            self._refused[version] = fingerprint
            self._refusals[version] = exc.reason
            self._last_refusal = exc
            events.append(
                RepositoryEvent("refused", None if version == -1 else version, path, exc.reason)
            )
            return None
        self.name = self.name or classifier.name
        batcher = self._make_batcher(classifier)
        batcher.start()
        events.append(RepositoryEvent("loaded", classifier.version, path))
        served = ServedVersion(classifier, batcher)
        served.idle.set()
        return served

    def _check_identity(self, classifier: Classifier, version: int) -> None:
        """A version folder holds what its name says, and every version is the same model."""
        if version != -1 and classifier.version != version:
            raise ModelLoadError(
                classifier.path,
                f"metadata.json says version {classifier.version}, the folder is {version}",
            )
        if self.name is not None and classifier.name != self.name:
            raise ModelLoadError(
                classifier.path,
                f"metadata.json names model '{classifier.name}', "
                f"this repository serves '{self.name}'",
            )

    def _unload_later(self, served: ServedVersion) -> None:
        """Unloaded once its in-flight requests are done; the event is emitted then."""

        async def unload() -> None:
            await served.idle.wait()
            await served.batcher.stop()
            self._emit(RepositoryEvent("unloaded", served.version, served.classifier.path))

        task = asyncio.get_running_loop().create_task(unload(), name=f"unload-{served.version}")
        self._unloading.add(task)
        task.add_done_callback(self._unloading.discard)

    def _emit(self, event: RepositoryEvent) -> None:
        if event.kind == "refused":
            logger.error("refused model version at %s: %s", event.path, event.reason)
        else:
            logger.info("%s model version %s from %s", event.kind, event.version, event.path)
        if self._on_event is not None:
            self._on_event(event)


def _fingerprint(version_dir: Path) -> tuple[int, ...]:
    """Changes when the folder or its top files change: a refused version is retried then."""
    stamps = []
    for path in (version_dir, version_dir / "saved_model.pb", version_dir / "metadata.json"):
        try:
            stat = path.stat()
            stamps += [stat.st_mtime_ns, stat.st_size]
        except OSError:
            stamps += [0, 0]
    return tuple(stamps)
