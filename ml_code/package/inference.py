"""SageMaker PyTorch inference handlers for the DermaOps lesion classifier: the four handlers only.

In ``model.tar.gz`` this package ships as ``code/dermaops_model/`` beside a two-line
``code/inference.py`` that re-exports these handlers (see ``ml_code.package.loader``): the
AWS PyTorch inference container imports ``inference`` with ``code/`` on ``sys.path``, where
``ml_code`` is not installed, so the package imports only torch, torchvision, Pillow, NumPy,
the standard library and its own modules (relative imports).

- :func:`model_fn` loads the network, its normalisation and temperature, and the descriptor model;
- :func:`input_fn` checks a body (:mod:`requests`), raising ``RequestError`` with an HTTP status;
- :func:`predict_fn` scores it (:func:`model.predict_images`);
- :func:`output_fn` renders ``{"predicted_class", "probabilities", "model_arch", "ood_score",
  "in_distribution", "image_features", "drift_embedding"}`` (the OOD fields null when the package
  has no OOD statistics, :mod:`ood`; ``image_features`` the monitoring features of the image,
  :mod:`image_features`, and ``drift_embedding`` a projection of its penultimate embedding,
  :mod:`drift_embedding`, for a request the endpoint decoded itself).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from . import descriptors, drift_embedding, ood
from .image_features import ANSWER_FIELD, answer_features, sent_size
from .image_policy import decode_square_with_facts
from .model import Probabilities, ServedModel, load_model, network_log_probs, predict_images
from .networks import PENULTIMATE
from .requests import RESPONSE_CONTENT_TYPE, RequestError, negotiate_accept, parse_request


def model_fn(model_dir: str | os.PathLike) -> ServedModel:
    """Load ``model_config.json`` + ``model.pt`` (+ ``descriptors.npz``) from ``model_dir``."""
    return load_model(model_dir)


def input_fn(body: bytes | bytearray, content_type: str) -> dict[str, Any]:
    """Check and pass on a request body: ``{"image_bytes", "clinical"}``. The model's input size
    is not known here, so :func:`predict_fn` decodes to that size (JPEG draft decoding needs it).
    Raises ``RequestError`` (a ValueError carrying ``status_code``) for what the client must fix."""
    return parse_request(body, content_type)


def predict_fn(data: Any, model: ServedModel) -> np.ndarray:
    """Class probabilities ``(N, C)``: what the endpoint serves.

    ``data`` is what :func:`input_fn` returned, a uint8 ``(N, S, S, 3)`` array, or a dict
    ``{"images": uint8 array, "clinical": (N, M) array or None, "views": 1..8 or None,
    "network_only": bool, "ablations": bool}`` (batch scoring with clinical context; ``views``
    overrides the package's test-time views; ``network_only`` is for ablations, and ``ablations``
    also returns them, ``{"image_only", "network_only": (N, C)}`` on the result's ``ablations``,
    from the same network pass, for evaluation): all go through
    :func:`model.predict_images`, so the descriptor model is fused in when the package has one.
    A normalised float tensor ``(N, 3, S, S)`` gets the network's temperature-scaled
    probabilities only (no pixels left for descriptors; Grad-CAM titles use this).
    Images (not tensors) scored by a package with OOD statistics also get their OOD scores and
    flags (``ood_scores``, ``in_distribution`` on the result), from the same forward pass.

    A request body (``input_fn``'s output, what the endpoint serves) also gets the monitoring
    features of the model view it was decoded to, and its size as sent (``image_features`` on the
    result, a list of one ``{name: float}``, :func:`image_features.answer_features`): the
    monitor reads them from the capture instead of decoding every captured image again. They
    cost about 0.2-0.3 ms a request at 96 px, 0.7-1.3 ms at 224 px (benchmarks/monitoring_volume.py), next
    to the forward pass. Such a request also gets its penultimate embedding, projected
    (``drift_embedding`` on the result, a list of one :func:`drift_embedding.answer_embedding`), from
    the same forward pass: the drift monitor compares these with the training data's without
    loading the network (:mod:`drift_embedding` says why).
    """
    features: list[dict[str, np.ndarray]] | None = [] if getattr(model, "ood", None) is not None else None
    monitored: list[dict[str, float]] | None = None
    embedded: list[dict[str, Any]] | None = None
    ablations: dict[str, np.ndarray] | None = None  # filled by predict_images when asked for
    if isinstance(data, dict) and "image_bytes" in data:
        context, clinical = data.get("clinical"), None
        if context and model.descriptor_model is not None:
            clinical = descriptors.clinical_features([context.get("age")], [context.get("sex")],
                                                     [context.get("site")])
        view, facts = decode_square_with_facts(data["image_bytes"], model.image_size)
        monitored = [answer_features(view, sent_size(facts))]  # before the network sees the view
        layers: list[dict[str, np.ndarray]] = [] if features is None else features
        probs = predict_images(view[None], model, clinical, features=layers)
        embedded = [drift_embedding.answer_embedding(row) for row in
                    drift_embedding.project(np.concatenate([f[PENULTIMATE] for f in layers]))]
    elif isinstance(data, dict) and "images" in data:
        views = data.get("views")
        ablations = {} if data.get("ablations") else None
        probs = predict_images(data["images"], model, data.get("clinical"), None if views is None else int(views),
                               network_only=bool(data.get("network_only", False)), features=features,
                               ablations=ablations)
    elif isinstance(data, np.ndarray):
        probs = predict_images(data, model, features=features)
    elif isinstance(data, torch.Tensor):
        x = data if data.ndim == 4 else data[None]
        probs, features = np.exp(network_log_probs(x, model, 1, model.temperature)), None
    else:
        raise ValueError(f"predict_fn got {type(data).__name__}; expected input_fn output, array, dict or tensor")
    out = np.asarray(probs, dtype=np.float32).view(Probabilities)
    out.classes, out.arch = list(model.classes), str(model.config["arch"])
    out.image_features = monitored
    out.drift_embedding = embedded
    if ablations is not None:
        out.ablations = {name: np.asarray(value, dtype=np.float32) for name, value in ablations.items()}  # as served
    if features:
        out.ood_scores = model.ood.scores({name: np.concatenate([f[name] for f in features]) for name in features[0]})
        out.in_distribution = model.ood.in_distribution(out.ood_scores)
    return out


def output_fn(prediction: np.ndarray, accept: str | None = RESPONSE_CONTENT_TYPE) -> str:
    """JSON ``{"predicted_class", "probabilities": {class: p}, "model_arch", "ood_score",
    "in_distribution"[, "image_features", "drift_embedding"]}`` per image (a list when the request held several images).
    ``ood_score`` is the largest of the image's Mahalanobis distances to the training data at
    several depths of the network, each on its validation scale (:mod:`ood`), and
    ``in_distribution`` whether it is within the validation-calibrated threshold;
    both are null when the package has no OOD statistics. ``image_features`` (when
    :func:`predict_fn` decoded the request itself): the image's monitoring features,
    ``{"brightness", ..., "entropy", "width", "height"}`` (``image_features.ANSWER_FEATURES``; pixel
    features of the model view on a 0-1 scale, width/height in px as sent) and ``drift_embedding``
    (likewise): ``{"projection", "encoding", "data"}`` (32 float32, base64), :mod:`drift_embedding`.
    An Accept it cannot meet is a 406 RequestError."""
    negotiate_accept(accept)
    classes = list(getattr(prediction, "classes", []) or [])
    arch = getattr(prediction, "arch", "") or ""
    monitored = getattr(prediction, "image_features", None)
    embedded = getattr(prediction, "drift_embedding", None)
    probs = np.asarray(prediction, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[None]
    if len(classes) != probs.shape[1]:
        raise ValueError(
            f"output_fn needs the Probabilities returned by predict_fn (with class names); got "
            f"{type(prediction).__name__} of shape {probs.shape}"
        )
    records = [
        {
            "predicted_class": classes[int(np.argmax(p))],
            "probabilities": {c: float(v) for c, v in zip(classes, p)},
            "model_arch": arch,
            **ood.answer_fields(getattr(prediction, "ood_scores", None),
                                getattr(prediction, "in_distribution", None), i),
            **({ANSWER_FIELD: monitored[i]} if monitored is not None and i < len(monitored) else {}),
            **({drift_embedding.ANSWER_FIELD: embedded[i]} if embedded is not None and i < len(embedded) else {}),
        }
        for i, p in enumerate(probs)
    ]
    return json.dumps(records[0] if len(records) == 1 else records)


__all__ = ["RequestError", "input_fn", "model_fn", "output_fn", "predict_fn"]
