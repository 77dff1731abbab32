"""GET /: the page for people, plain files from app/web (no build step, no CDN, works offline).

The page's script talks only to the documented API (/explain, /model), so it is a client like
any other and the API stays the single thing to test and document.
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).resolve().parent.parent / "web"

router = APIRouter(include_in_schema=False)
static = StaticFiles(directory=ASSETS)


@router.get("/")
async def page() -> FileResponse:
    """The page: choose, drop or paste images and see the answers."""
    return FileResponse(ASSETS / "index.html", media_type="text/html; charset=utf-8")
