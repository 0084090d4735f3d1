"""What a request may carry, and the errors that refuse it, each with its HTTP status.

Ships inside ``model.tar.gz``. The handlers in :mod:`inference` raise :class:`RequestError`
for anything the client can fix; the serving layer (``ml_code.serving.transform``, or the
SageMaker inference toolkit, which reads ``status_code`` the same way) turns it into the
answer's status. Messages name the field and the allowed form, never the value sent: a
request may carry patient details, and error texts reach capture files and logs.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from http import HTTPStatus
from typing import Any

from PIL import Image, UnidentifiedImageError

from . import descriptors
from .imaging import check_request_image, undecodable

#: Content types a request may carry; also the data-capture config's lists.
SUPPORTED_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image", "application/json")
#: The one content type answers are in.
RESPONSE_CONTENT_TYPE = "application/json"
#: ``application/json`` requests: the image base64-encoded plus optional clinical context.
JSON_REQUEST_FIELDS = ("image", "age", "sex", "anatom_site")
SEX_VALUES = ("male", "female", "unknown")


class RequestError(ValueError):
    """A request the client must change: ``status_code`` is the HTTP status to answer with.

    Named like the SageMaker inference toolkit's ``GenericInferenceToolkitError.status_code``.
    """

    def __init__(self, message: str, status_code: int = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status_code = int(status_code)


def content_type_of(header: str | None) -> str:
    """The media type of a Content-Type header, lower-cased, parameters dropped."""
    return (header or "").split(";")[0].strip().lower()


def negotiate_accept(header: str | None) -> str:
    """``application/json`` when the Accept header allows it (absent, ``*/*``, ``application/*``
    or ``application/json`` anywhere in the list, with a non-zero q); else a 406 RequestError."""
    if not header or not header.strip():
        return RESPONSE_CONTENT_TYPE
    for item in header.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = next((p.split("=", 1)[1] for p in params if p.replace(" ", "").startswith("q=")), "1")
        try:
            acceptable = float(q) > 0
        except ValueError:
            acceptable = True
        if acceptable and media.lower() in ("application/json", "application/*", "*/*", "*"):
            return RESPONSE_CONTENT_TYPE
    raise RequestError("cannot answer the Accept header sent; this endpoint answers application/json "
                       "(send Accept: application/json or */*)", HTTPStatus.NOT_ACCEPTABLE)


def parse_request(body: bytes | bytearray, content_type: str) -> dict[str, Any]:
    """Check a request body: ``{"image_bytes": bytes, "clinical": dict | None}``.

    Image content types carry the file's bytes. ``application/json`` carries
    ``{"image": "<base64 JPEG/PNG>", "age": 63, "sex": "female", "anatom_site": "back"}``;
    the clinical fields are optional (null or absent = unknown) and feed the descriptor model.
    Raises :class:`RequestError` (415 for a content type, else 400) saying what to change.
    """
    ctype = content_type_of(content_type)
    if ctype not in SUPPORTED_CONTENT_TYPES:
        raise RequestError(f"unsupported Content-Type; send one of {', '.join(SUPPORTED_CONTENT_TYPES)} "
                           "with the image file's bytes as the body", HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
    if not isinstance(body, (bytes, bytearray)) or not body:
        raise RequestError("empty request body; send the bytes of a JPEG or PNG image")
    body = bytes(body)
    clinical = None
    if ctype == "application/json":
        body, clinical = _parse_json_request(body)
    bad = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
    try:
        img = Image.open(io.BytesIO(body))
    except bad as exc:
        raise RequestError(str(undecodable(ctype, body, exc))) from exc
    with img:
        try:
            check_request_image(img)
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
        try:
            img.load()  # validate here, so a bad body is the client's 4xx, not a model error
        except bad as exc:
            raise RequestError(str(undecodable(ctype, body, exc))) from exc
    return {"image_bytes": body, "clinical": clinical}


def _parse_json_request(body: bytes) -> tuple[bytes, dict[str, Any]]:
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"application/json body is not valid JSON (at character {getattr(exc, 'pos', '?')})") \
            from exc
    if not isinstance(request, dict) or not isinstance(request.get("image"), str):
        raise RequestError('application/json body must be an object with "image": the base64 of a JPEG or PNG '
                           'file (optional: "age", "sex", "anatom_site")')
    unknown = set(request) - set(JSON_REQUEST_FIELDS)
    if unknown:
        raise RequestError(f"{len(unknown)} unknown field(s) in the JSON request; allowed fields: "
                           f"{', '.join(JSON_REQUEST_FIELDS)}")
    try:
        image = base64.b64decode(request["image"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError('"image" is not valid base64; send the base64 of a JPEG or PNG file') from exc
    if not image:
        raise RequestError('"image" is empty; send the base64 of a JPEG or PNG file')
    age = request.get("age")
    if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age <= 120):
        raise RequestError('"age" must be a number of years in 0-120, or null')
    for key in ("sex", "anatom_site"):
        if request.get(key) is not None and not isinstance(request[key], str):
            raise RequestError(f'"{key}" must be a string or null')
    # A value outside the vocabulary is refused rather than read as unknown: "F" silently
    # scored as "sex unknown" would change the answer without anyone noticing.
    sex, site = request.get("sex"), request.get("anatom_site")
    if sex is not None and sex.strip().lower() not in SEX_VALUES:
        raise RequestError(f'"sex" must be one of {", ".join(SEX_VALUES)} or null (abbreviations are not guessed)')
    sites = descriptors.KNOWN_SITES | {"unknown"}
    if site is not None and site.strip().lower() not in sites:
        raise RequestError('"anatom_site" is not a body site this model knows; send a HAM10000 localization or '
                           f'an ISIC anatom_site_general value ({", ".join(sorted(sites))}) or null')
    return image, {"age": age, "sex": sex, "site": site}
