"""Attribution methods as data: Method, Param, RunContext and MethodOutput.

Each method is one :class:`Method` entry in :data:`REGISTRY`. An entry holds
its name, its parameters (name, type, default, range, help), whether it needs
an eager ``nn.Module`` and one call with the same signature as every other
method::

    fn(model, x, target, params, ctx) -> MethodOutput

* ``model``: a callable returning scores of shape (N, classes) on ``x``'s device;
  either an eager ``nn.Module`` or a TorchScript module.
* ``x``: input tensor (1, C, D, H, W) on the model grid, already normalised.
* ``target``: the class index to explain.
* ``params``: a dict already validated by :meth:`Method.parse`.
* ``ctx``: a :class:`RunContext` for progress, cancellation and warnings.

Widgets and the CLI are generated from these entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import Cancelled, UserError


@dataclass(frozen=True)
class Param:
    """One parameter of a method.

    ``type`` is one of ``int``, ``float``, ``str``, ``bool``, ``"ints3"``
    (three integers such as a window, written ``8,8,8`` or ``8``) or ``"layer"``
    (a module name of the model, as in ``named_modules``; ``layers(module, x)``
    gives the valid names and the one used when it is empty, so the widget
    offers what the method accepts). ``choices`` restricts a ``str`` parameter.
    ``minimum``/``maximum`` bound numbers (inclusive). ``default=None`` means
    "chosen from the input" (e.g. the occlusion window or the Grad-CAM layer).
    """

    name: str
    type: Any
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: for a "layer" parameter: (module, x) -> (valid layer names, the layer used when empty, or None)
    layers: Callable[[Any, Any], tuple[list[str], str | None]] | None = None

    def coerce(self, value: Any, method: str) -> Any:
        """Convert ``value`` (possibly a string from the CLI) and check its range."""
        if value is None:
            return None
        where = f"parameter '{self.name}' of method '{method}'"
        try:
            if self.type == "ints3":
                if isinstance(value, str):
                    parts = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
                elif isinstance(value, (int, float)):
                    parts = [int(value)]
                else:
                    parts = [int(v) for v in value]
                if len(parts) == 1:
                    parts = parts * 3
                if len(parts) != 3:
                    raise ValueError
                out: Any = tuple(parts)
                if self.minimum is not None and min(out) < self.minimum:
                    raise UserError(f"{where} must be at least {self.minimum:g} in each axis, got {value}.")
                return out
            if self.type is bool:
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low in ("1", "true", "yes", "on"):
                        return True
                    if low in ("0", "false", "no", "off"):
                        return False
                    raise ValueError
                return bool(value)
            if self.type is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                out = int(value)
            elif self.type is float:
                out = float(value)
                if out != out or out in (float("inf"), float("-inf")):
                    raise UserError(f"{where} must be a finite number, got {value!r}.")
            elif hasattr(value, "to_dict"):
                # a str parameter that names a file may take the in-memory object instead (e.g. an LrpConfig);
                # the method records its to_dict() in the provenance, never the object
                return value
            else:
                out = str(value)
        except (TypeError, ValueError, OverflowError):
            tname = "three integers like 8,8,8" if self.type == "ints3" else getattr(self.type, "__name__", str(self.type))
            raise UserError(f"{where} must be {tname}, got {value!r}.") from None
        if self.choices is not None and out not in self.choices:
            raise UserError(f"{where} must be one of {', '.join(map(str, self.choices))}; got {out!r}.")
        if self.minimum is not None and out < self.minimum:
            raise UserError(f"{where} must be >= {self.minimum:g}, got {out}.")
        if self.maximum is not None and out > self.maximum:
            raise UserError(f"{where} must be <= {self.maximum:g}, got {out}.")
        return out


@dataclass
class RunContext:
    """What a method may use while it runs: progress, cancellation, warnings."""

    progress: Callable[[float, str], None] | None = None
    should_stop: Callable[[], bool] | None = None
    warnings: list[str] = field(default_factory=list)
    is_scripted: bool = False
    #: 4x4 voxel -> world (mm) affine of the model grid (for methods that use anatomy, e.g. atlas regions).
    grid_affine: Any = None
    #: The prepared input whose model output the pipeline still needs (``explain``): the first forward pass of a
    #: method's score function on exactly this input leaves its output in ``scores``, so that the prediction
    #: costs no pass of its own (docs/performance.md).
    capture_input: Any = None
    scores: Any = None

    def step(self, fraction: float, message: str = "") -> None:
        """Report progress in [0, 1] and raise :class:`Cancelled` if asked to stop."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("cancelled by the user")
        if self.progress is not None:
            self.progress(float(min(max(fraction, 0.0), 1.0)), message)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


@dataclass
class MethodOutput:
    """Relevance on the model grid, shape (1, C, D, H, W), plus what was used."""

    relevance: Any  # torch.Tensor
    used: dict = field(default_factory=dict)  # resolved defaults, e.g. the chosen layer


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    summary: str
    fn: Callable[..., MethodOutput]
    params: tuple[Param, ...] = ()
    needs_module: bool = False
    signed: bool = True
    reference: str = ""
    #: the map multiplies by the input: an amount of score per voxel (integrated gradients, LRP, occlusion ...),
    #: not a sensitivity (saliency, SmoothGrad, CAM ...); robustness's infidelity reads it
    multiplies_input: bool = False
    #: the method also returns intermediate maps (LRP segment boundaries, attention gates): --out-intermediate
    has_intermediate: bool = False
    #: the map does not depend on the target class (attention coefficients): explain may run the method before
    #: the prediction and take the prediction from the method's own forward pass (``RunContext.scores``)
    target_independent: bool = False
    #: the method takes an LRP configuration: its 'config' parameter is an LrpConfig (or its JSON file) and the
    #: record holds the whole configuration; reproduce and the LRP designer read it
    takes_config: bool = False

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def parse(self, raw: dict[str, Any] | None) -> dict[str, Any]:
        """Validate user parameters, fill defaults. Unknown names are a :class:`UserError`."""
        raw = dict(raw or {})
        known = {p.name for p in self.params}
        unknown = sorted(set(raw) - known)
        if unknown:
            hint = ", ".join(sorted(known)) if known else "none"
            raise UserError(
                f"method '{self.name}' has no parameter {', '.join(map(repr, unknown))}; its parameters are: {hint}."
            )
        # an explicit None (an empty field) means the default; defaults live only in the Param
        return {p.name: p.coerce(p.default if raw.get(p.name) is None else raw[p.name], self.name) for p in self.params}

    def run(self, model: Any, x: Any, target: int, params: dict[str, Any] | None = None,
            ctx: RunContext | None = None) -> MethodOutput:
        """Parse ``params`` (defaults filled from the Params) and call the method."""
        return self.fn(model, x, target, self.parse(params), ctx if ctx is not None else RunContext())


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    REGISTRY[method.name] = method
    return method


def entry(name: str, family: str, summary: str, *params: Param, **facts: Any) -> Callable:
    """Decorator form of :func:`register`: the entry stands on the method's function.

    ``@entry("saliency", "gradient", "Gradient of ...", ABS, reference="...")`` registers
    ``Method(name, family, summary, fn, params, **facts)`` and returns the function unchanged.
    """

    def decorate(fn: Callable[..., MethodOutput]) -> Callable[..., MethodOutput]:
        register(Method(name=name, family=family, summary=summary, fn=fn, params=tuple(params), **facts))
        return fn

    return decorate
