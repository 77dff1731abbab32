"""GET /: the page for people, plain files from app/web (no build step, no CDN, works offline).

The page's script talks only to the documented API (/explain, /model), so it is a client like
any other and the API stays the single thing to test and document.
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).resolve().parent.parent / "web"
# The page loads only its own files and shows the user's pictures (blob: URLs) and the server's
# 32x32 inputs (data: URLs); nothing may frame it, and no response is sniffed as another type.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)
static = StaticFiles(directory=ASSETS)


@router.get("/")
async def page() -> FileResponse:
    """The page: choose, drop or paste images and see the answers."""
    return FileResponse(
        ASSETS / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS
    )
