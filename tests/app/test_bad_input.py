"""Every kind of bad upload is a 4xx JSON error naming the file, never a 5xx."""

import functools
import json
import struct
import zlib

import pytest

from app.preprocessing import MAX_TIFF_TAG_VALUES
from tests.conftest import image_bytes, tiff_directory


@functools.cache
def documented_predict_errors() -> dict[str, set[str]]:
    """Status -> the error codes /docs shows as examples for POST /predict."""
    from app.main import create_app

    responses = create_app().openapi()["paths"]["/predict"]["post"]["responses"]
    return {
        status: set(entry["content"]["application/json"]["examples"])
        for status, entry in responses.items()
        if not status.startswith("2")
    }


def assert_error(response, status: int, code: str, file: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["file"] == file
    request = response.request
    if (request.method, request.url.path) == ("POST", "/predict"):  # as /docs says it can
        documented = documented_predict_errors().get(str(status), set())
        assert code in documented, f"{status} {code} is not documented for /predict"


def png_header_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR for a huge image, followed by a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


NOT_IMAGES = {
    "notes.jpg": b"just some text, not an image\n",
    "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
    "doc.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
    "photo.heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
    "random.png": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("name", NOT_IMAGES)
def test_non_images_are_415_naming_the_file(client, name: str) -> None:
    response = client.post("/predict", files={"files": (name, NOT_IMAGES[name], "image/jpeg")})

    assert_error(response, 415, "unsupported_format", name)


def test_empty_part_is_400(client) -> None:
    response = client.post("/predict", files={"files": ("empty.png", b"", "image/png")})

    assert_error(response, 400, "empty_file", "empty.png")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_400(client, fmt: str) -> None:
    data = image_bytes(fmt, (300, 300))
    response = client.post("/predict", files={"files": ("cut.img", data[: len(data) // 2], "x/y")})

    assert_error(response, 400, "corrupt_image", "cut.img")


def test_one_bad_file_fails_the_request_and_is_named(client) -> None:
    files = [
        ("files", ("good.png", image_bytes(), "image/png")),
        ("files", ("bad.jpg", b"nope", "image/jpeg")),
        ("files", ("good2.png", image_bytes(seed=1), "image/png")),
    ]

    assert_error(client.post("/predict", files=files), 415, "unsupported_format", "bad.jpg")


def test_image_over_max_pixels_is_413_from_the_header(client) -> None:
    bomb = png_header_claiming(20000, 20000)  # 400 megapixels in a few hundred bytes
    assert len(bomb) < 1000

    response = client.post("/predict", files={"files": ("bomb.png", bomb, "image/png")})

    assert_error(response, 413, "image_too_large", "bomb.png")
    assert "MAX_IMAGE_PIXELS" in response.json()["error"]["message"]


def test_max_image_pixels_setting_is_applied(make_client) -> None:
    client = make_client(max_image_pixels=50 * 50)
    small = client.post("/predict", files={"files": ("ok.png", image_bytes(size=(50, 50)), "x")})
    large = client.post("/predict", files={"files": ("big.png", image_bytes(size=(51, 50)), "x")})

    assert small.status_code == 200
    assert_error(large, 413, "image_too_large", "big.png")


def test_more_files_than_allowed_is_413(make_client) -> None:
    client = make_client(max_images_per_request=4)
    files = [("files", (f"{i}.png", image_bytes(seed=i), "image/png")) for i in range(5)]

    assert_error(client.post("/predict", files=files), 413, "too_many_parts")


def test_body_over_max_upload_bytes_is_413(make_client) -> None:
    client = make_client(max_upload_bytes=64 * 1024)
    big = image_bytes("PNG", (200, 200))  # ~120 KB of noise
    assert len(big) > 64 * 1024

    assert_error(client.post("/predict", files={"files": ("big.png", big)}), 413, "body_too_large")


def test_streamed_body_over_the_cap_is_cut(make_client) -> None:
    client = make_client(max_upload_bytes=64 * 1024)
    boundary = "XyZ"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="s.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunks():  # no Content-Length: the server has to count
        yield head
        for _ in range(100):
            yield b"\x00" * 4096

    response = client.post(
        "/predict",
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )

    assert_error(response, 413, "body_too_large")


def test_wrong_field_name_is_422(client) -> None:
    response = client.post("/predict", files={"image": ("a.png", image_bytes(), "image/png")})

    assert_error(response, 422, "missing_files")
    assert "'image'" in response.json()["error"]["message"]  # says what it received


def test_json_body_is_415(client) -> None:
    response = client.post("/predict", json={"files": ["a.png"]})

    assert_error(response, 415, "unsupported_media_type")
    assert "'application/json'" in response.json()["error"]["message"]  # what it received


def test_no_body_is_415(client) -> None:
    response = client.post("/predict")

    assert_error(response, 415, "unsupported_media_type")
    assert "'no body'" in response.json()["error"]["message"]


def test_multipart_without_boundary_is_400(client) -> None:
    response = client.post(
        "/predict", content=b"--x\r\n\r\n", headers={"Content-Type": "multipart/form-data"}
    )

    assert_error(response, 400, "invalid_multipart")


def multipart(*parts: tuple[str, bytes], boundary: str = "XyZ", close: bool = True) -> bytes:
    """A hand-built multipart body: (Content-Disposition parameters, data) per part."""
    body = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; {params}\r\n\r\n".encode()
        + data
        + b"\r\n"
        for params, data in parts
    )
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


def post_multipart(client, body: bytes, boundary: str = "XyZ"):
    return client.post(
        "/predict",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


def test_parts_not_named_files_are_ignored(client) -> None:
    body = multipart(('name="note"', b"hello"), ('name="files"; filename="a.png"', image_bytes()))

    response = post_multipart(client, body)

    assert response.status_code == 200, response.text
    assert [p["filename"] for p in response.json()["predictions"]] == ["a.png"]


def test_a_files_part_without_filename_is_still_an_image(client) -> None:
    response = post_multipart(client, multipart(('name="files"', image_bytes())))

    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["filename"] == ""


def test_many_parts_not_named_files_are_413(client) -> None:
    parts = [(f'name="f{i}"', b"x") for i in range(17)]
    body = multipart(*parts, ('name="files"; filename="a.png"', image_bytes()))

    assert_error(post_multipart(client, body), 413, "too_many_parts")


def test_body_without_the_closing_boundary_is_400(client) -> None:
    body = multipart(('name="files"; filename="a.png"', image_bytes()), close=False)

    assert_error(post_multipart(client, body), 400, "invalid_multipart")


def test_oversized_part_header_is_400(client) -> None:
    body = multipart((f'name="files"; filename="{"a" * 10_000}.png"', image_bytes()))

    assert_error(post_multipart(client, body), 400, "invalid_multipart")


def test_garbage_after_the_boundary_is_400(client) -> None:
    assert_error(
        post_multipart(client, b"--XyZ\r\n\x00\x01 not a header\r\n"), 400, "invalid_multipart"
    )


def test_top_k_out_of_range_is_one_rule_with_one_message(client) -> None:
    messages = set()
    for k in (0, 11, -1):
        response = client.post(
            "/predict", params={"top_k": k}, files={"files": ("a.png", image_bytes(), "image/png")}
        )
        assert_error(response, 422, "invalid_request")
        messages.add(response.json()["error"]["message"])

    assert messages == {"top_k must be between 1 and 10"}
    parameters = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["parameters"]
    top_k = next(p for p in parameters if p["name"] == "top_k")["schema"]
    assert (top_k["minimum"], top_k["maximum"]) == (1, 10)  # 10: the loaded model's labels


def test_documented_error_examples_are_real_error_bodies(client) -> None:
    schema = client.get("/openapi.json").json()
    assert "not_an_image" not in json.dumps(schema)  # the code the API never returned
    for status, codes in documented_predict_errors().items():
        entry = schema["paths"]["/predict"]["post"]["responses"][status]
        for code in codes:
            value = entry["content"]["application/json"]["examples"][code]["value"]
            assert value["error"]["code"] == code and value["error"]["message"]


def test_unknown_route_and_method_are_json(client) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/predict"), 405, "method_not_allowed")


@pytest.mark.parametrize("layout", ["II", "MM", "II+", "MM+"])
def test_a_tiff_listing_too_many_strips_is_400_whatever_its_layout(client, layout: str) -> None:
    """BigTIFF directories used to raise struct.error in the strip guard: a 500."""
    tiff = tiff_directory(layout, 273, MAX_TIFF_TAG_VALUES + 1)

    response = client.post("/predict", files={"files": ("big.tif", tiff, "image/tiff")})

    assert_error(response, 400, "corrupt_image", file="big.tif")
