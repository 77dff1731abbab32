"""Every knob of the service, read from the environment in one place."""

from functools import lru_cache
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.backends import BackendChoice, PrecisionChoice
from app.contract import Views
from app.cpu import available_cpus
from app.version_policy import VersionPolicy

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "cifar10"


class Settings(BaseSettings):
    """Service settings; each field is the upper-case environment variable of the same name."""

    model_config = SettingsConfigDict(env_file=None, protected_namespaces=(), extra="ignore")

    # Model
    model_dir: Path = Field(
        DEFAULT_MODEL_DIR,
        description="A model folder of integer versions (MODEL_VERSION_POLICY says which are "
        "served), or one version folder (holds saved_model.pb).",
    )
    inference_backend: BackendChoice = Field(
        "auto",
        description="Runtime serving the SavedModel: tensorflow, openvino (CPU only), or auto "
        "(tensorflow when it sees a GPU, else openvino when installed, else tensorflow).",
    )
    inference_precision: PrecisionChoice = Field(
        "auto",
        description="What openvino computes in: f32, bf16 (CPUs with AVX512_BF16 or AMX), int8 "
        "(the version's int8/model.xml), or auto: the fastest this CPU computes natively whose "
        "test accuracy in metadata.json is within 0.3 points of f32's and whose golden check "
        "passes. An explicit choice is served or refused, never replaced. tensorflow computes "
        "f32 only.",
    )
    model_version_policy: str = Field(
        "latest:1",
        description="Which versions of a model folder are loaded, as TF Serving's policy: "
        "'latest:N' (the N highest that load), 'all', or 'specific:1,3'. Requests get the "
        "highest loaded unless they name a version.",
    )
    model_poll_s: float = Field(
        5.0,
        ge=0,
        description="Seconds between looks at the model folder for new, changed or removed "
        "versions (0: never; load and unload through /v2/repository instead).",
    )

    # Request limits
    max_images_per_request: int = Field(64, ge=1, le=1024, description="Files per request.")
    max_upload_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Whole request body, in bytes (a compressed one once inflated); gRPC: "
        "the largest message.",
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1024, description="Width x height of one image, read from its header."
    )
    max_upload_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Request bodies held at once by one process, in bytes (from each declared "
        "length, else as bytes arrive, until the answer is sent; gRPC messages too); beyond "
        "it, 503 with Retry-After (gRPC: UNAVAILABLE).",
    )
    upload_timeout_s: float = Field(
        60.0, gt=0, description="Longest time to receive a request body; slower clients get 408."
    )
    default_top_k: int = Field(3, ge=1, description="top_k when the query does not say.")

    # Batching: concurrent requests are merged into one model call.
    max_batch_size: int = Field(256, ge=1, le=4096, description="Images per model call.")
    max_batch_delay_ms: float = Field(
        2.0, ge=0, le=1000, description="Wait for more images after the first, in ms."
    )
    max_queue_images: int = Field(
        2048, ge=1, description="Images waiting for the model before requests get 503."
    )
    uncertain_below: float | None = Field(
        None,
        ge=0,
        le=1,
        description='An answer whose confidence is below this is flagged "uncertain": true '
        "(a request may say ?uncertain_below=). Unset: the served version's own threshold "
        "(metadata.json `uncertainty`: the lowest confidence at which its answered test images "
        "are >= 99 % right), or 0 (never) for a version without one.",
    )
    views: Views = Field(
        "auto",
        description="Test-time views for a request that does not say (?views=): `auto` adds "
        "the other views only for images the model is unsure of (the version's threshold), "
        "`one` computes one view per image, `all` every view. A version without adaptive "
        "views serves its fixed views.",
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="From upload received to answer, decoding included; past it, 504, and "
        "the images not yet decoded and a batch not yet computed are dropped.",
    )
    inference_workers: int | None = Field(
        None,
        ge=1,
        description="Batches computed at once in each process, each on its own thread "
        "(None: 2 when there are 2 or more CPUs, else 1).",
    )

    explain_concurrency: int = Field(
        1,
        ge=1,
        description="/explain requests computed at once per process (each image is ~50 model "
        "inputs); more wait in line, up to EXPLAIN_QUEUE.",
    )
    explain_queue: int = Field(
        4,
        ge=0,
        description="/explain requests waiting per process; one more gets 503 with Retry-After.",
    )

    # CPU threads (None: derived from the CPU quota the process really has)
    intra_op_threads: int | None = Field(None, ge=1, description="TensorFlow intra-op threads.")
    inter_op_threads: int | None = Field(None, ge=1, description="TensorFlow inter-op threads.")
    inference_threads: int | None = Field(
        None,
        ge=1,
        description="CPUs one OpenVINO model call may use, in every process (None: all the "
        "CPUs of the quota; the OS shares them between processes under load).",
    )
    decode_threads: int | None = Field(
        None,
        ge=1,
        description="Threads that open and decode every upload off the event loop, in each process "
        "(None: all the CPUs of the quota); full-size decodes (not JPEG, over 4 megapixels) "
        "run at most CPUs / WORKERS at once per process, which bounds their memory.",
    )

    # Process (used by `python -m app`)
    workers: int | None = Field(
        None,
        ge=1,
        description="Serving processes sharing the port, each with its own model and batcher "
        "(None: one per CPU of the quota); each sizes its TensorFlow threads by CPUs / WORKERS "
        "(OpenVINO: INFERENCE_THREADS; decoding: DECODE_THREADS).",
    )
    host: str = Field("0.0.0.0", description="Address uvicorn binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port uvicorn binds.")
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol over gRPC (inference."
        "GRPCInferenceService, as Triton's 8001), on HOST; every process of WORKERS serves it "
        "(SO_REUSEPORT). 0: no gRPC.",
    )
    listen_fd: int | None = Field(
        None,
        ge=0,
        description="An inherited socket, already bound, to serve instead of binding HOST:PORT "
        "(socket activation: a process manager or a test harness binds port 0 and reads the "
        "port back, so no other process can take it in between).",
    )
    graceful_shutdown_s: float = Field(
        20.0, ge=0, description="After SIGTERM, how long in-flight requests may take."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest time for a request head (request line and headers) to arrive; "
        "past it the client gets 408 and the connection is closed.",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description="Longest request line and headers, in bytes, counted as they arrive; "
        "beyond it the client gets 431 and the connection is closed.",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="Open connections per process; a request beyond them gets a JSON 503. "
        "gRPC: calls at once per process; one more gets RESOURCE_EXHAUSTED.",
    )
    drain_delay_s: float = Field(
        0.0,
        ge=0,
        description="After SIGTERM, how long /health says 503 while still serving, "
        "so a load balancer stops sending before the listener closes.",
    )

    # HTTP
    cors_allow_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; empty means CORS is off."
    )
    api_key: SecretStr | None = Field(
        None,
        description="The inference key: when set, /predict, /explain, /model and the /v2 "
        "models API require it in the X-API-Key header (health, GET /v2, the docs and the page "
        "do not, nor /metrics unless PROTECT_DETAILS).",
    )
    protect_details: bool = Field(
        False,
        description="With API_KEY set: /metrics needs the key too, and /health without it "
        "answers only its status (probes keep working; model, versions, backend and labels "
        "go to key holders).",
    )
    admin_api_key: SecretStr | None = Field(
        None,
        description="The admin key: the /v2 repository API (index, load, unload) requires it in "
        "the X-API-Key header; unset, that API answers 403. The inference key does not open it.",
    )
    log_level: str = Field("info", description="Python logging level name.")

    @field_validator("model_version_policy")
    @classmethod
    def _check_policy(cls, value: str) -> str:
        return str(VersionPolicy.parse(value))

    @property
    def version_policy(self) -> VersionPolicy:
        return VersionPolicy.parse(self.model_version_policy)

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.max_images_per_request > self.max_batch_size:
            raise ValueError(
                f"MAX_IMAGES_PER_REQUEST ({self.max_images_per_request}) must not exceed "
                f"MAX_BATCH_SIZE ({self.max_batch_size}): one request is one batch"
            )
        if self.max_upload_bytes_in_flight < self.max_upload_bytes:
            raise ValueError("MAX_UPLOAD_BYTES_IN_FLIGHT must hold at least one full upload")
        if self.max_images_per_request > self.max_queue_images:
            raise ValueError("MAX_QUEUE_IMAGES must hold at least one full request")
        if (
            self.api_key is not None
            and self.admin_api_key is not None
            and self.api_key.get_secret_value() == self.admin_api_key.get_secret_value()
        ):
            raise ValueError("ADMIN_API_KEY must differ from API_KEY: one key would open both")
        if self.inference_backend == "tensorflow" and self.inference_precision in ("bf16", "int8"):
            raise ValueError(
                f"INFERENCE_PRECISION={self.inference_precision} needs INFERENCE_BACKEND=openvino "
                "or auto: tensorflow computes f32 only"
            )
        return self

    # Each `effective_<setting>` below is that setting as set, else derived from the CPU quota.

    @property
    def cpus(self) -> int:
        return available_cpus()

    @property
    def processes(self) -> int:
        return self.workers or self.cpus

    @property
    def cpus_per_process(self) -> int:
        """The CPUs one serving process sizes its threads by: the quota shared by WORKERS."""
        return max(1, self.cpus // self.processes)

    @property
    def effective_inference_workers(self) -> int:
        # Per process, whatever WORKERS is: with WORKERS=2 on 2 CPUs, two 1-thread batches per
        # process beat one by 6-8 % (a process may use the CPU the other leaves idle).
        return self.inference_workers or min(2, self.cpus)

    @property
    def effective_intra_op_threads(self) -> int:
        """The process's CPUs shared out between the batches that run at once."""
        return self.intra_op_threads or max(
            1, self.cpus_per_process // self.effective_inference_workers
        )

    @property
    def effective_inter_op_threads(self) -> int:
        """One per concurrent batch: with a single one, TensorFlow runs them in turn."""
        return self.inter_op_threads or self.effective_inference_workers

    @property
    def effective_inference_threads(self) -> int:
        """The whole quota in every process: a lone large request gets every core, and under
        load the OS shares them out (benchmarks/results/split.md)."""
        return self.inference_threads or self.cpus

    @property
    def effective_decode_threads(self) -> int:
        """Like OpenVINO's threads, the whole quota in every process: with WORKERS > 1 the
        kernel spreads connections unevenly, and a process decoding more photos than the other
        may use the CPU it leaves idle (benchmarks/results/split.md)."""
        return self.decode_threads or self.cpus

    @property
    def full_size_decodes(self) -> int:
        """Full-size decodes at once per process: their memory stays what CPUs / WORKERS
        threads allowed before every process could decode on every CPU."""
        return min(self.effective_decode_threads, self.cpus_per_process)


@lru_cache
def get_settings() -> Settings:
    return Settings()
