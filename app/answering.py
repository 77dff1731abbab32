"""How a request wants its answers, resolved once for /predict and /explain: the deadline, how
many labels to rank, the "not sure" threshold and the test-time views."""

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from app import serving
from app.contract import Views
from app.deps import ClassifierDep, SettingsDep


@dataclass(frozen=True)
class Answering:
    deadline: float  # on the event loop's clock: REQUEST_TIMEOUT_S from when the body was read
    top_k: int
    uncertain_below: float
    views: Views | None  # None: the served version's views are fixed
    views_below: float | None  # what the model is fed for `views`


async def get_answering(
    classifier: ClassifierDep,
    settings: SettingsDep,
    top_k: serving.TopK = None,
    uncertain_below: serving.UncertainBelow = None,
    views: serving.ViewsAsked = None,
) -> Answering:
    """The query's choices checked against the served version, else the settings' defaults."""
    served_views = serving.resolve_views(views, settings.views, classifier)
    return Answering(
        deadline=asyncio.get_running_loop().time() + settings.request_timeout_s,
        top_k=serving.resolve_top_k(top_k, len(classifier.labels), settings.default_top_k),
        uncertain_below=serving.resolve_uncertain_below(
            uncertain_below, settings.uncertain_below, classifier.uncertain_below
        ),
        views=served_views,
        views_below=served_views and classifier.views_below(served_views),
    )


AnsweringDep = Annotated[Answering, Depends(get_answering)]
