"""The model's prediction for an explanation, and its memory: one forward pass (errors as one line), the
outputs remembered per model for the last few inputs (keyed by the input's digest and the weights' versions), the
models seen to return class scores, and the labels derived from a remembered segmentation output.

:func:`napari_xai.core.explain.explain` decides from these when a forward pass can be skipped
(docs/performance.md, "The pipeline's fixed costs").
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from .errors import UserError


def predict(model: Any, x) -> np.ndarray:
    """Class probabilities (softmax; sigmoid for a single output) for a (1, C, ...) input."""
    import torch

    from .models import check_output

    scores = check_output(forward(model.module, x))
    if scores.shape[1] == 1:
        probs = torch.sigmoid(scores)[0]
    else:
        probs = torch.softmax(scores.float(), dim=1)[0]
    return probs.detach().cpu().numpy().astype(float)


def forward(module: Any, x):
    import torch

    with torch.no_grad():
        try:
            return module(x)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:  # anything raised by the user's model is a user error
            raise model_error(exc, module, x) from None


def model_error(exc: BaseException, module: Any, x) -> UserError:
    """One line for an exception raised by (or because of) the user's model: the model, the input shape, a hint."""
    import re

    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    name = getattr(module, "_xai_name", None) or type(getattr(module, "model", module)).__name__
    shape = tuple(int(s) for s in x.shape)
    low = text.lower()
    if any(k in low for k in ("does not require grad", "does not have a grad_fn", "not have been used in the graph")):
        return UserError(f"the output of model {name} does not depend on its input of shape {shape} (no gradient "
                         "reaches the input: does forward() detach, use torch.no_grad() or ignore x?); gradient "
                         "methods cannot explain it, fix the model or use occlusion.")
    if "inplace operation" in low or "in-place operation" in low or "leaf variable" in low:
        return UserError(f"model {name} changes a tensor in place that the gradient needs (input of shape {shape}; "
                         "e.g. x += ..., x.clamp_() or ReLU(inplace=True) on the input); make forward() work on a copy.")
    m = re.search(r"divisible by (\d+)", text)
    if m:
        hint = f"the network needs sizes divisible by {m.group(1)}: pass --input-shape D,H,W with such sizes"
    else:
        hint = "check the grid and channels the network accepts and pass --input-shape D,H,W if needed"
    return UserError(f"model {name} failed on an input of shape {shape} ({type(exc).__name__}: {first[:240]}); {hint}.")


def model_fault(exc: BaseException, module: Any) -> bool:
    """True when ``exc`` came from the user's model: raised inside one of its modules' forward() (and not from
    napari-xai, Captum or Zennit code called from there), or a gradient error typical of a model (no input
    dependence, in-place changes)."""
    import traceback

    low = str(exc).lower()
    if isinstance(exc, RuntimeError) and any(k in low for k in ("does not require grad", "does not have a grad_fn",
                                                                  "not have been used in the graph",
                                                                  "inplace operation", "leaf variable")):
        return True
    try:
        mods = {id(m) for m in module.modules()}
    except Exception:
        return False
    frames = [f for f, _ in traceback.walk_tb(exc.__traceback__)]
    inside = [i for i, f in enumerate(frames) if f.f_code.co_name == "forward" and id(f.f_locals.get("self")) in mods]
    if not inside:
        return False
    ours = (f"{os.sep}napari_xai{os.sep}", f"{os.sep}captum{os.sep}", f"{os.sep}zennit{os.sep}")
    return not any(any(o in f.f_code.co_filename for o in ours) for f in frames[inside[-1] + 1:])


_PREDICTIONS: Any = None  # weakref.WeakKeyDictionary: module -> OrderedDict(key -> output), see predict_cached
PREDICTION_CACHE_SIZE = 2
_PREDICTIONS_LOCK = threading.Lock()  # widgets explain from worker threads


def _state_key(module: Any) -> tuple:
    """Identity and in-place version of every parameter and buffer: changes whenever the weights change."""
    import torch

    if not isinstance(module, torch.nn.Module):
        return (id(module),)
    # one walk over the modules' own tensors (parameters() and buffers() walk twice and de-duplicate: 0.4 ms for a
    # 100-module network, a tenth of its explanation's fixed costs); a shared tensor simply appears twice
    return tuple((id(t), t._version) for m in module.modules()
                 for d in (m._parameters, m._buffers) for t in d.values() if t is not None)


_LAST_DIGEST: list = [None]  # (the last hashed CPU input, its version then, its digest): see _input_digest


def _input_digest(x) -> str:
    """SHA-256 of the input tensor's bytes, the identity of an input for the remembered predictions.

    Explaining one input again (another method or setting, the interactive case) gives a new tensor of the same
    values: when it equals the last input hashed, unchanged since (same version), value for value -- a comparison
    at memory speed, 0.02 against 0.29 ms for the demo's 48x56x48 input -- that input's digest is reused. SHA-256
    runs in the CPU's SHA instructions where present: about twice blake2b's speed here.
    """
    import hashlib

    data = x.detach().cpu().contiguous().numpy()
    with _PREDICTIONS_LOCK:
        last = _LAST_DIGEST[0]
    if last is not None:
        prev, version, digest = last
        if (prev._version == version and prev.shape == x.shape and prev.dtype == x.dtype
                and np.array_equal(prev.numpy(), data)):
            return digest
    digest = hashlib.sha256(memoryview(data.reshape(-1).view(np.uint8))).hexdigest()  # no copy
    if x.device.type == "cpu":  # keeps one input alive (never an accelerator's memory)
        kept = x.detach()
        with _PREDICTIONS_LOCK:
            _LAST_DIGEST[0] = (kept, kept._version, digest)
    return digest


def prediction_key(module: Any, x) -> tuple:
    return (_input_digest(x), tuple(x.shape), str(x.dtype), str(x.device), _state_key(module))


def _store(module: Any):
    import weakref
    from collections import OrderedDict

    global _PREDICTIONS
    if _PREDICTIONS is None:
        _PREDICTIONS = weakref.WeakKeyDictionary()
    try:
        return _PREDICTIONS.setdefault(module, OrderedDict())
    except TypeError:  # not weak-referenceable (e.g. some scripted modules)
        return None


def remember_prediction(module: Any, key: tuple, out):
    import torch

    detached = tuple(o.detach() if torch.is_tensor(o) else o for o in out) if isinstance(out, (tuple, list)) else (
        out.detach() if torch.is_tensor(out) else out)
    with _PREDICTIONS_LOCK:
        store = _store(module)
        if store is not None:
            store[key] = detached
            while len(store) > PREDICTION_CACHE_SIZE:
                store.popitem(last=False)
    return detached


def predict_cached(module: Any, x, key: tuple | None = None):
    """The model's output for ``x``, remembered per model for the last few inputs.

    Switching methods or parameters on the same input (the interactive case)
    then costs no extra prediction pass. The key holds a digest of the input
    tensor and the identity and version of every weight, so retrained or
    reloaded weights miss the cache; models in training mode (e.g. MC dropout)
    are never cached. ``key`` is this input's :func:`prediction_key` when the caller has it already.
    """
    if getattr(module, "training", False):
        return forward(module, x)
    key = key if key is not None else prediction_key(module, x)
    with _PREDICTIONS_LOCK:
        store = _store(module)
        if store is not None and key in store:
            store.move_to_end(key)
            return store[key]
    return remember_prediction(module, key, forward(module, x))


#: Models seen to return plain class scores: module -> {(input shape, dtype): number of classes}. Their next
#: explanation with an explicit class index takes the prediction from the method's own forward pass.
_CLASSIFIERS: Any = None


def known_classes(module: Any, x) -> int | None:
    if _CLASSIFIERS is None or getattr(module, "training", False):
        return None
    try:
        return _CLASSIFIERS.get(module, {}).get((tuple(x.shape), str(x.dtype)))
    except TypeError:
        return None


def note_classifier(module: Any, x, n_classes: int) -> None:
    import weakref

    global _CLASSIFIERS
    if _CLASSIFIERS is None:
        _CLASSIFIERS = weakref.WeakKeyDictionary()
    try:
        _CLASSIFIERS.setdefault(module, {})[(tuple(x.shape), str(x.dtype))] = int(n_classes)
    except TypeError:
        pass


_LABEL_FACTS: dict = {}  # id(remembered segmentation output) -> (finite, labels); see label_facts


def label_facts(out, predicted_labels) -> tuple[bool, np.ndarray]:
    """Whether a segmentation output is finite, and its predicted labels (numpy); remembered per output tensor
    (by identity, dropped with the tensor), so explaining a remembered prediction again (another method, the
    interactive case) does not derive them again. The remembered outputs are detached copies no one else holds
    (:func:`remember_prediction`), and the labels are read-only."""
    import weakref

    import torch

    with _PREDICTIONS_LOCK:
        facts = _LABEL_FACTS.get(id(out))
    if facts is None:
        finite = bool(torch.isfinite(out).all())
        labels = predicted_labels(out).cpu().numpy() if finite else None
        if labels is not None:
            labels.setflags(write=False)  # shared by every explanation of this output
        facts = (finite, labels)
        with _PREDICTIONS_LOCK:
            _LABEL_FACTS[id(out)] = facts
        weakref.finalize(out, _LABEL_FACTS.pop, id(out), None)
    return facts


def is_remembered(module: Any, key: tuple) -> bool:
    """Whether the output for ``key`` (:func:`prediction_key`) is remembered for ``module``."""
    with _PREDICTIONS_LOCK:
        store = _store(module)
        return store is not None and key in store


def forget_predictions(classifiers: bool = True) -> None:
    """Forget every remembered output (the next explanation of an input predicts again) and, with
    ``classifiers``, which models were seen to return class scores."""
    global _PREDICTIONS, _CLASSIFIERS
    with _PREDICTIONS_LOCK:
        _PREDICTIONS = None
        if classifiers:
            _CLASSIFIERS = None
