"""The API's request and response shapes: the single source of truth for OpenAPI."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class PredictForm(BaseModel):
    """The multipart body of POST /predict and /explain (documented here; parsed by
    `app.uploads`)."""

    # bytes is `format: binary` in the schema: Swagger UI shows a file picker per item.
    files: list[bytes] = Field(description="One or more images: JPEG, PNG, WebP, GIF, BMP or TIFF.")


class LabelProbability(BaseModel):
    label: str = Field(examples=["cat"])
    probability: float = Field(ge=0, le=1, examples=[0.91])


class Prediction(BaseModel):
    filename: str = Field(description="The part's filename as sent (at most 255 characters).")
    label: str = Field(description="The most probable label.")
    confidence: float = Field(ge=0, le=1, description="Probability of `label`.")
    top_k: list[LabelProbability] = Field(description="The k most probable labels, best first.")
    probabilities: dict[str, float] = Field(description="Probability of every label.")
    uncertain: bool = Field(
        description="`confidence` is below the request's `uncertain_below`: the model is not "
        "sure, and the image may show none of the ten labels. `label` is still its best guess."
    )


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "cifar10",
                    "version": 1,
                    "uncertain_below": 0.63,
                    "views": "auto",
                    "predictions": [
                        {
                            "filename": "cat.png",
                            "label": "cat",
                            "confidence": 0.91,
                            "uncertain": False,
                            "top_k": [
                                {"label": "cat", "probability": 0.91},
                                {"label": "dog", "probability": 0.06},
                                {"label": "frog", "probability": 0.01},
                            ],
                            "probabilities": {
                                "airplane": 0.002,
                                "automobile": 0.001,
                                "bird": 0.004,
                                "cat": 0.91,
                                "deer": 0.003,
                                "dog": 0.06,
                                "frog": 0.01,
                                "horse": 0.005,
                                "ship": 0.002,
                                "truck": 0.003,
                            },
                        }
                    ],
                }
            ]
        }
    )

    model: str = Field(description="Name of the model that answered.")
    version: int = Field(description="Version of the model that answered.")
    uncertain_below: float = Field(
        description="The confidence below which an answer is flagged `uncertain` in this "
        "response: the request's, else UNCERTAIN_BELOW, else the version's own."
    )
    views: Literal["auto", "one", "all", "fixed"] = Field(
        description="The test-time views that answered: the request's `views`, else the VIEWS "
        "setting; `fixed` for a version whose views do not adapt."
    )
    predictions: list[Prediction] = Field(description="One result per uploaded file, in order.")


class Explanation(Prediction):
    """One image's prediction, the picture the model classified, and where it looked."""

    input_png: str = Field(
        description="The model input exactly as classified (32x32 RGB after decoding and "
        "resizing), as a `data:image/png;base64,` URL.",
        examples=["data:image/png;base64,iVBORw0KGgo..."],
    )
    sensitivity: list[list[float]] = Field(
        description="Rows x columns of square positions, row by row from the top left: "
        "`confidence` minus the probability of `label` with the square at that position "
        "greyed out. Between -1 and 1; the largest value marks the region that mattered most, "
        "a negative one a region that argued against `label`.",
        examples=[[[0.01, 0.2], [0.0, -0.03]]],
    )
    heatmap_png: str | None = Field(
        None,
        description="With `heatmap=true`: the input upscaled 8x with nearest-neighbour and the "
        "map drawn over it (red: hiding it lowered `label`, blue: raised it; relative to this "
        "image's largest change), as a `data:image/png;base64,` URL.",
    )


class ExplainResponse(BaseModel):
    model: str = Field(description="Name of the model that answered.")
    version: int = Field(description="Version of the model that answered.")
    patch: int = Field(description="Side of the grey square, in model-input pixels.", examples=[8])
    stride: int = Field(description="Step between square positions, in pixels.", examples=[4])
    fill: int = Field(description="Grey level of the square in every channel.", examples=[128])
    explanations: list[Explanation] = Field(description="One per uploaded file, in order.")


class HealthResponse(BaseModel):
    """With PROTECT_DETAILS and API_KEY set, a request without the key gets `status` alone."""

    status: str = Field(examples=["ok"])
    model: str | None = Field(None, examples=["cifar10"])
    version: int | None = Field(
        None, examples=[2], description="The default version: the one /predict uses."
    )
    versions: list[int] | None = Field(None, examples=[[2, 1]], description="Every loaded version.")
    backend: str | None = Field(
        None, examples=["openvino"], description="The runtime computing the model."
    )
    precision: str | None = Field(
        None, examples=["f32"], description="What the runtime computes in."
    )
    labels: list[str] | None = None


class LiveResponse(BaseModel):
    status: str = Field(examples=["alive"])


class ModelInfo(BaseModel):
    """The served model's metadata.json, as training wrote it."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: int
    labels: list[str]
    input: dict[str, Any]
    metrics: dict[str, Any] = Field(default_factory=dict)
    loaded_versions: list[int] = Field(
        description="Every version being served, highest first; `?version=` picks one."
    )
    runtime: dict[str, Any] = Field(
        description="How this process runs the version: `backend`, `precision` and why "
        "(`precision_reason`), and the golden-set check made at load (`golden`: null when the "
        "version has none)."
    )


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable reason (see the README's table).")
    message: str = Field(description="What went wrong, for a person.")
    file: str | None = Field(None, description="The offending upload's filename, if any.")


class ErrorResponse(BaseModel):
    error: ErrorDetail
