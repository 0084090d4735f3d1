"""One request through a package's handlers, with every failure mapped to its HTTP status.

Shaped like the SageMaker inference toolkit's ``Transformer.transform``: the HTTP layer
(``ml_code.serving.serve``) keeps transport, admission control and capture, and this is the
one place that decides what a failure means for the client:

- 406 an Accept the endpoint cannot meet, 415 a content type it does not read, 400 an empty
  body or one the package's ``input_fn`` refuses (``RequestError.status_code`` wins when set);
- 500 anything that fails inside ``predict_fn`` / ``output_fn`` (our fault, not the client's):
  the answer names only the exception type, the log has the traceback.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from ml_code.package.loader import OpenedPackage
from ml_code.package.requests import SUPPORTED_CONTENT_TYPES, RequestError, content_type_of, negotiate_accept

LOG = logging.getLogger("dermaops.serve")


class InferenceError(Exception):
    """A request that ends in an error answer: ``status_code`` and a client-safe ``message``."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = int(status_code)
        self.message = message

    def body(self) -> str:
        return json.dumps({"error": self.message})


def output_text(result: Any) -> str:
    """output_fn may return str, bytes, or (body, content_type) as the SageMaker toolkit allows."""
    if isinstance(result, tuple) and result:
        result = result[0]
    if isinstance(result, (bytes, bytearray)):
        return bytes(result).decode("utf-8")
    if isinstance(result, str):
        return result
    return json.dumps(result)


def transform(package: OpenedPackage, body: bytes, content_type: str | None, accept: str | None) -> str:
    """The JSON answer to one request, or :class:`InferenceError` with the status to send.

    Pure apart from the model's forward pass: no I/O, no counters, no capture."""
    try:
        accept_type = negotiate_accept(accept)
    except RequestError as exc:
        raise InferenceError(exc.status_code, str(exc)) from None
    ctype = content_type_of(content_type)
    if ctype not in SUPPORTED_CONTENT_TYPES:
        raise InferenceError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                             f"unsupported Content-Type; send one of {', '.join(SUPPORTED_CONTENT_TYPES)}")
    if not body:
        raise InferenceError(HTTPStatus.BAD_REQUEST, "empty body; send the image bytes")
    handlers = package.handlers
    try:
        data = handlers.input_fn(body, ctype)
    except Exception as exc:  # noqa: BLE001 - the client sent something the package cannot read
        status = getattr(exc, "status_code", HTTPStatus.BAD_REQUEST)
        raise InferenceError(status, f"cannot decode the {ctype} body: {exc}") from None
    try:
        return output_text(handlers.output_fn(handlers.predict_fn(data, package.model), accept_type))
    except Exception as exc:  # noqa: BLE001 - ours, not the client's
        status = int(getattr(exc, "status_code", HTTPStatus.INTERNAL_SERVER_ERROR))
        if status >= 500:
            LOG.exception("inference failed")
            raise InferenceError(status, f"inference failed: {type(exc).__name__}") from None
        raise InferenceError(status, str(exc)) from None
