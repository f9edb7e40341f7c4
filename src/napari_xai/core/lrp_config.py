"""LRP configurations: layers in execution order, segments with rules, named JSON configurations.

A **configuration** (the LRP designer's "model", after Huang et al.) is a named
list of **segments**. A segment is a start and an end layer (inclusive, in the
order the layers *execute*, which is not the order ``named_modules()``
registers them) with one unified LRP rule (:class:`~napari_xai.core.lrp_rules.RuleParams`).
Every Conv/Linear layer inside a segment gets that rule; Conv/Linear layers
outside all segments get the configuration's ``default`` rule. The other layers
are handled the same way for every configuration (:func:`~napari_xai.core.lrp.layer_kind`):
normalisations and activations pass relevance, average pooling and upsampling
get the sum rule, max pooling, reshapes and concatenations pass the gradient,
BatchNorm is merged into the Conv/Linear before it, residual additions and
gates get their own rules.

Configurations are saved as JSON, one per file or several in a library file::

    {"format": "napari-xai/lrp-configs", "version": 1, "active": "gamma-eps-0",
     "configurations": [
        {"name": "gamma-eps-0", "description": "", "zero_bias": false,
         "default": {"preset": "lrp-0"},
         "segments": [
            {"name": "lower", "start": "conv1", "end": "layer2.1.conv2", "preset": "lrp-gamma",
             "params": {"gamma1p": 0.25}},
            {"name": "middle", "start": "layer3.0.conv1", "end": "layer4.1.conv2", "preset": "lrp-epsilon",
             "params": {"epsilon": 0.25}}],
         "layer_rules": {}, "intermediate": ["layer2.1.conv2"]}]}

A segment's ``params`` are the ten parameters of the unified rule; a
``preset`` fills the ones not given (so ``{"preset": "lrp-epsilon", "params":
{"epsilon": 0.1}}`` is enough). ``layer_rules`` gives layers without a rule one
(``pass``, ``sum`` or ``gradient``); ``intermediate`` names layers whose incoming
relevance is kept as a volume.
"""

from __future__ import annotations

import difflib
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .lrp_rules import PRESETS, RuleParams, conserves, formula, get_preset, match_preset

__all__ = [
    "FORMAT",
    "LIBRARY_FORMAT",
    "LayerInfo",
    "LrpConfig",
    "Resolved",
    "Segment",
    "default_config",
    "list_layers",
    "load_config",
    "load_configs",
    "resolve",
    "run_config",
    "save_configs",
]

FORMAT = "napari-xai/lrp-config"
LIBRARY_FORMAT = "napari-xai/lrp-configs"
VERSION = 1
LAYER_RULES = ("pass", "sum", "gradient")
#: Conservation is reported as broken when |R_in / R_out - 1| exceeds this.
CONSERVATION_TOLERANCE = 0.10


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class LayerInfo:
    """One leaf layer of a model, in execution order.

    Attributes
    ----------
    index : int
        Position in execution order (0-based, first call).
    name : str
        Module name as in ``named_modules()``.
    type : str
        Class name, e.g. ``Conv3d``.
    output_shape : tuple of int or None
        Output shape in the traced forward pass.
    kind : str
        How LRP treats it: ``rule`` (gets a segment rule), ``pass``, ``sum``,
        ``gradient`` or ``none`` (no rule: an error unless ``layer_rules`` names it).
    calls : int
        How often it ran in one forward pass.
    parameters : int
        Number of its own parameters.
    """

    index: int
    name: str
    type: str
    output_shape: tuple[int, ...] | None
    kind: str
    calls: int = 1
    parameters: int = 0

    @property
    def label(self) -> str:
        """``#3 features.conv0 · Conv3d · (1, 64, 16, 16, 16)`` for lists and dropdowns."""
        shape = "×".join(map(str, self.output_shape[1:])) if self.output_shape else "-"
        return f"#{self.index} {self.name} · {self.type} · {shape}"

    @property
    def spatial(self) -> bool:
        return self.output_shape is not None and len(self.output_shape) == 5


_LAYERS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def list_layers(model: nn.Module, x: torch.Tensor) -> list[LayerInfo]:
    """The model's leaf layers in execution order, with type, output shape and LRP treatment.

    One no-grad forward pass with a hook on every leaf module (and on modules
    that hold parameters of their own) records the order in which they finish;
    for leaves this is the order in which they run. Layers that did not run are
    not listed. Cached per model and input shape.

    Parameters
    ----------
    model : nn.Module
        An eager module (TorchScript has no hooks).
    x : torch.Tensor
        An input (1, C, D, H, W) on the model's device.
    """
    from .methods._model import model_session
    from .lrp import layer_kind

    if isinstance(model, torch.jit.ScriptModule):
        raise UserError("listing layers needs an eager nn.Module, but the model is TorchScript; load it as a .py file with weights.")
    modules = dict(model.named_modules())
    key = (tuple(x.shape), str(x.dtype), str(x.device), len(modules))
    cache = _LAYERS.setdefault(model, {})
    if key in cache:
        return cache[key]
    watched = {
        n: m for n, m in modules.items()
        if n and (not list(m.children()) or any(True for _ in m.parameters(recurse=False)))
    }
    if not watched and not list(model.children()):
        watched = {"": model}
    order: list[str] = []
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}

    def make(name: str):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if name not in shapes:
                out = output[0] if isinstance(output, (tuple, list)) and output else output
                shapes[name] = tuple(out.shape) if torch.is_tensor(out) else None
                order.append(name)

        return hook

    with model_session(model):
        handles = [m.register_forward_hook(make(n)) for n, m in watched.items()]
        try:
            with torch.no_grad():
                model(x.detach().clone())
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"the model failed on an input of shape {tuple(x.shape)}: {first[:300]}") from None
        finally:
            for h in handles:
                h.remove()
    layers = [
        LayerInfo(
            index=i, name=n, type=type(modules[n]).__name__, output_shape=shapes[n], kind=layer_kind(modules[n]),
            calls=calls[n], parameters=sum(p.numel() for p in modules[n].parameters(recurse=False)),
        )
        for i, n in enumerate(order)
    ]
    cache[key] = layers
    return layers


# --------------------------------------------------------------------------- configurations


@dataclass
class Segment:
    """A range of layers (inclusive, execution order) with one unified LRP rule."""

    start: str
    end: str
    rule: RuleParams = field(default_factory=RuleParams)
    name: str = ""

    @property
    def preset(self) -> str:
        return match_preset(self.rule)

    def to_dict(self) -> dict:
        return {"name": self.name, "start": self.start, "end": self.end, "preset": self.preset, "params": self.rule.to_dict()}


def _rule_from(data: Any, where: str) -> RuleParams:
    if data is None:
        return RuleParams()
    if isinstance(data, str):
        return get_preset(data).params
    if not isinstance(data, dict):
        raise UserError(f"{where}: a rule must be an object with 'preset' and/or 'params', got {type(data).__name__}.")
    unknown = sorted(set(data) - {"preset", "params", "name", "start", "end"})
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; a rule has 'preset' and 'params'.")
    preset = data.get("preset")
    base = RuleParams() if preset in (None, "", "custom") else get_preset(str(preset)).params
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise UserError(f"{where}: 'params' must be an object of the ten LRP parameters.")
    return RuleParams.from_dict({**base.to_dict(), **params}, where)


FILTER_KINDS = ("pass", "clamp")


@dataclass
class LayerFilter:
    """A fraction filter on relevance inside LRP (Joa et al., LRP on 3D U-Nets for stroke lesions).

    At each filtered layer the relevance R is normalised by N = max|R|; with
    ``kind="pass"`` values whose |R|/N lies outside [alpha1, alpha2] become 0,
    with ``kind="clamp"`` |R|/N is clamped into [alpha1, alpha2] (sign kept),
    then multiplied by N again. ``pass`` with [0, 0.4] removes the top 60 % of
    the amplitude range, ``clamp`` with [0, 0.2] flattens the top 80 %.
    """

    kind: str = "pass"
    alpha1: float = 0.0
    alpha2: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FILTER_KINDS:
            raise UserError(f"filter kind must be one of {', '.join(FILTER_KINDS)}, got {self.kind!r}.")
        if not 0.0 <= float(self.alpha1) < float(self.alpha2) <= 1.0:
            raise UserError(f"filter range [{self.alpha1:g}, {self.alpha2:g}] must satisfy 0 <= alpha1 < alpha2 <= 1 "
                            "(fractions of the largest |relevance|).")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "alpha": [float(self.alpha1), float(self.alpha2)]}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "LayerFilter | None":
        if data in (None, {}, ""):
            return None
        if not isinstance(data, dict) or "kind" not in data:
            raise UserError(f"{where}: 'filter' must be an object like {{\"kind\": \"pass\", \"alpha\": [0, 0.4]}}.")
        alpha = data.get("alpha", [0.0, 1.0])
        if isinstance(alpha, (int, float)):
            alpha = [0.0, float(alpha)]
        if not isinstance(alpha, list) or len(alpha) != 2:
            raise UserError(f"{where}: filter 'alpha' must be a number (the range [0, alpha]) or [alpha1, alpha2].")
        return cls(str(data["kind"]), float(alpha[0]), float(alpha[1]))

    def apply(self, rel):
        """The filtered relevance tensor (a new tensor; an all-zero input comes back unchanged)."""
        import torch

        n = rel.detach().abs().amax()
        if not bool(n > 0):
            return rel
        frac = rel.abs() / n
        if self.kind == "pass":
            keep = (frac >= self.alpha1) & (frac <= self.alpha2)
            return torch.where(keep, rel, torch.zeros_like(rel))
        return torch.sign(rel) * frac.clamp(self.alpha1, self.alpha2) * n

    def label(self) -> str:
        rng = f"{self.alpha2:g}" if self.alpha1 == 0 else f"[{self.alpha1:g}, {self.alpha2:g}]"
        return f"{rng}-{self.kind}"


@dataclass
class LrpConfig:
    """A named LRP configuration: segments with rules, a default rule and options.

    Attributes
    ----------
    name : str
    segments : list of Segment
    default : RuleParams
        Rule of Conv/Linear layers outside every segment (LRP-0 unless set).
    zero_bias : bool
        Leave biases out of every rule (then rules with alpha - beta = 1 and small
        epsilon conserve relevance exactly).
    layer_rules : dict of str to str
        ``pass``, ``sum`` or ``gradient`` for named layers, e.g. layers without a rule.
    intermediate : list of str
        Layers whose incoming relevance (at their output) is kept as a volume.
    filter : LayerFilter or None
        Fraction-pass or fraction-clamp filter applied to the relevance arriving
        at every rule layer but the last (Joa et al.: filters within LRP layers).
    description : str
    """

    name: str = "configuration"
    segments: list[Segment] = field(default_factory=list)
    default: RuleParams = field(default_factory=RuleParams)
    zero_bias: bool = False
    layer_rules: dict[str, str] = field(default_factory=dict)
    intermediate: list[str] = field(default_factory=list)
    description: str = ""
    filter: "LayerFilter | None" = None

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "description": self.description,
            "zero_bias": bool(self.zero_bias),
            "default": {"preset": match_preset(self.default), "params": self.default.to_dict()},
            "segments": [s.to_dict() for s in self.segments],
            "layer_rules": dict(self.layer_rules),
            "intermediate": list(self.intermediate),
            "filter": self.filter.to_dict() if self.filter is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "configuration") -> "LrpConfig":
        if not isinstance(data, dict):
            raise UserError(f"{where}: an LRP configuration must be a JSON object, got {type(data).__name__}.")
        fmt = data.get("format", FORMAT)
        if fmt != FORMAT:
            raise UserError(f"{where}: format {fmt!r} is not an LRP configuration ({FORMAT}).")
        if int(data.get("version", VERSION)) > VERSION:
            raise UserError(f"{where}: version {data.get('version')} is newer than this napari-xai reads ({VERSION}); update napari-xai.")
        known = {"format", "version", "name", "description", "zero_bias", "default", "segments", "layer_rules", "intermediate",
                 "filter"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}.")
        name = str(data.get("name") or "").strip()
        if not name:
            raise UserError(f"{where}: the configuration needs a 'name'.")
        where = f"configuration '{name}'"
        segs = data.get("segments") or []
        if not isinstance(segs, list):
            raise UserError(f"{where}: 'segments' must be a list.")
        segments = []
        for i, s in enumerate(segs):
            sw = f"{where} segment {i + 1}"
            if not isinstance(s, dict) or not s.get("start") or not s.get("end"):
                raise UserError(f"{sw}: a segment needs 'start' and 'end' layer names.")
            segments.append(Segment(start=str(s["start"]), end=str(s["end"]), rule=_rule_from(s, sw),
                                    name=str(s.get("name") or f"segment {i + 1}")))
        rules = data.get("layer_rules") or {}
        if not isinstance(rules, dict) or any(v not in LAYER_RULES for v in rules.values()):
            raise UserError(f"{where}: 'layer_rules' maps layer names to one of {', '.join(LAYER_RULES)}.")
        inter = data.get("intermediate") or []
        if not isinstance(inter, list):
            raise UserError(f"{where}: 'intermediate' must be a list of layer names.")
        cfg = cls(name=name, segments=segments, default=_rule_from(data.get("default"), f"{where} default rule"),
                  zero_bias=bool(data.get("zero_bias", False)), layer_rules={str(k): str(v) for k, v in rules.items()},
                  intermediate=[str(v) for v in inter], description=str(data.get("description") or ""),
                  filter=LayerFilter.from_dict(data.get("filter"), where))
        cfg.check_names()
        return cfg

    def check_names(self) -> None:
        names = [s.name for s in self.segments]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserError(f"configuration '{self.name}': segment name(s) {', '.join(dup)} used twice; give each segment its own name.")

    def copy(self, name: str | None = None) -> "LrpConfig":
        out = LrpConfig.from_dict(self.to_dict())
        if name:
            out.name = name
        return out

    def summary(self) -> str:
        """One line per configuration for labels: ``name: seg1 LRP-γ [a..b] | seg2 LRP-ε [..]``."""
        parts = []
        for s in self.segments:
            title = PRESETS[s.preset].title if s.preset in PRESETS else "custom"
            parts.append(f"{s.name} {title}")
        default = PRESETS.get(match_preset(self.default))
        rest = f"rest {default.title if default else 'custom'}"
        return f"{self.name}: " + " | ".join(parts + [rest])


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"LRP configuration file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read LRP configuration {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None


def load_configs(path: str | Path) -> tuple[list[LrpConfig], str | None]:
    """Read a configuration file (one configuration or a library); returns (configurations, active name)."""
    path = Path(path)
    data = _read_json(path)
    if isinstance(data, dict) and data.get("format") == LIBRARY_FORMAT:
        items = data.get("configurations")
        if not isinstance(items, list) or not items:
            raise UserError(f"{path}: the library has no 'configurations'.")
        configs = [LrpConfig.from_dict(c, f"{path.name} item {i + 1}") for i, c in enumerate(items)]
        names = [c.name for c in configs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserError(f"{path}: configuration name(s) {', '.join(dup)} used twice.")
        active = data.get("active")
        if active is not None and active not in names:
            raise UserError(f"{path}: the active configuration {active!r} is not in the file ({', '.join(names)}).")
        return configs, active
    cfg = LrpConfig.from_dict(data, path.name)
    return [cfg], cfg.name


def load_config(path: str | Path, name: str | None = None) -> LrpConfig:
    """One configuration from a file: ``name``, else the library's active one, else the first."""
    configs, active = load_configs(path)
    if name:
        for c in configs:
            if c.name == name:
                return c
        raise UserError(f"{path} has no configuration {name!r}; it has: {', '.join(c.name for c in configs)}.")
    if active:
        return next(c for c in configs if c.name == active)
    return configs[0]


def save_configs(path: str | Path, configs: Iterable[LrpConfig], active: str | None = None) -> Path:
    """Write configurations as JSON (atomic): one configuration as is, several as a library."""
    from .volumes import atomic_write_bytes

    configs = list(configs)
    if not configs:
        raise UserError("there is no configuration to save; create one first.")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise UserError("two configurations share a name; rename one before saving.")
    if len(configs) == 1 and active in (None, configs[0].name):
        data: dict = configs[0].to_dict()
    else:
        data = {"format": LIBRARY_FORMAT, "version": VERSION, "active": active or names[0],
                "configurations": [c.to_dict() for c in configs]}
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise UserError(f"the folder of {path} does not exist.")
    atomic_write_bytes(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return path


# --------------------------------------------------------------------------- validation


@dataclass
class Resolved:
    """A configuration checked against a model's layers."""

    config: LrpConfig
    layers: list[LayerInfo]
    rules: dict[str, RuleParams]  # rule layer name -> rule
    owner: dict[str, str]  # rule layer name -> segment name ("" = default)
    spans: list[tuple[int, int]]  # per segment: first and last layer index
    kinds: dict[str, str]  # layer name -> kind after layer_rules

    def segment_layers(self, i: int) -> list[LayerInfo]:
        a, b = self.spans[i]
        return self.layers[a:b + 1]

    @property
    def conserving(self) -> bool:
        """True if every rule used conserves relevance without biases (alpha - beta = 1, small epsilon)."""
        return all(conserves(r) for r in self.rules.values())


def _unknown(name: str, layers: list[LayerInfo], where: str) -> UserError:
    names = [l.name for l in layers]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"the model's layers include {', '.join(names[:4])}, ..."
    return UserError(f"{where} refers to layer {name!r}, which this model does not have; {hint}")


def resolve(config: LrpConfig, layers: list[LayerInfo]) -> Resolved:
    """Check ``config`` against the layers and give every Conv/Linear layer its rule.

    Raises
    ------
    UserError
        For a layer name the model does not have, an empty segment (start after
        end, or no Conv/Linear layer inside), overlapping segments, or a layer
        with parameters that has no LRP rule.
    """
    config.check_names()
    index = {l.name: l.index for l in layers}
    where = f"configuration '{config.name}'"
    for name, rule in config.layer_rules.items():
        if name not in index:
            raise _unknown(name, layers, f"{where} layer_rules")
        if rule not in LAYER_RULES:
            raise UserError(f"{where}: layer_rules[{name!r}] must be one of {', '.join(LAYER_RULES)}, got {rule!r}.")
    for name in config.intermediate:
        if name not in index:
            raise _unknown(name, layers, f"{where} intermediate layer list")
    kinds = {l.name: config.layer_rules.get(l.name, l.kind) for l in layers}
    for l in layers:
        if kinds[l.name] == "none":
            from .lrp import suggest_rule

            raise UserError(suggest_rule(l.name, l.type, l.parameters))
    spans = []
    for s in config.segments:
        sw = f"{where} segment '{s.name}'"
        for end in (s.start, s.end):
            if end not in index:
                raise _unknown(end, layers, sw)
        a, b = index[s.start], index[s.end]
        if a > b:
            raise UserError(
                f"{sw} is empty: its start layer '{s.start}' (#{a}) runs after its end layer '{s.end}' (#{b}); "
                "swap start and end."
            )
        if not any(kinds[l.name] == "rule" for l in layers[a:b + 1]):
            raise UserError(
                f"{sw} (layers #{a}-#{b}) contains no Conv/Linear layer, so its rule would apply nowhere; "
                "extend it to a Conv or Linear layer."
            )
        spans.append((a, b))
    order = sorted(range(len(spans)), key=lambda i: spans[i])
    for i, j in zip(order, order[1:]):
        if spans[j][0] <= spans[i][1]:
            si, sj = config.segments[i], config.segments[j]
            shared = layers[spans[j][0]].name
            raise UserError(
                f"{where}: segments '{si.name}' (#{spans[i][0]}-#{spans[i][1]}) and '{sj.name}' "
                f"(#{spans[j][0]}-#{spans[j][1]}) overlap at layer '{shared}'; let '{sj.name}' start after "
                f"'{layers[spans[i][1]].name}'."
            )
    rules: dict[str, RuleParams] = {}
    owner: dict[str, str] = {}
    for l in layers:
        if kinds[l.name] != "rule":
            continue
        rules[l.name], owner[l.name] = config.default, ""
        for s, (a, b) in zip(config.segments, spans):
            if a <= l.index <= b:
                rules[l.name], owner[l.name] = s.rule, s.name
    return Resolved(config=config, layers=layers, rules=rules, owner=owner, spans=spans, kinds=kinds)


def default_config(layers: list[LayerInfo], name: str = "composite (γ | ε | 0)") -> LrpConfig:
    """The composite recommended by Montavon et al. 2019: LRP-γ low, LRP-ε middle, LRP-0 top.

    The Conv/Linear layers (execution order) are split in thirds; with fewer than
    three rule layers the whole network uses LRP-ε.
    """
    rule_layers = [l for l in layers if l.kind == "rule"]
    if len(rule_layers) < 3:
        if not rule_layers:
            raise UserError("the model has no Conv or Linear layer, so LRP has nothing to propagate through.")
        return LrpConfig(name="LRP-ε", segments=[Segment(rule_layers[0].name, rule_layers[-1].name,
                                                          get_preset("lrp-epsilon").params, "all")])
    n = len(rule_layers)
    cut1, cut2 = n // 3, (2 * n) // 3
    groups = [rule_layers[:cut1], rule_layers[cut1:cut2], rule_layers[cut2:]]
    rules = [get_preset("lrp-gamma").params.replace(gamma1p=0.25), get_preset("lrp-epsilon").params, RuleParams()]
    titles = ["lower", "middle", "upper"]
    segs = [Segment(g[0].name, g[-1].name, r, t) for g, r, t in zip(groups, rules, titles) if g]
    return LrpConfig(name=name, segments=segs, description="Montavon et al. 2019: gamma low, epsilon middle, 0 top.")


# --------------------------------------------------------------------------- running


def boundary_points(resolved: Resolved) -> dict[str, tuple[str, str]]:
    """Capture points at every segment boundary: the relevance entering each segment's first layer from below.

    Key ``after <segment>``: the relevance at the *input* of the segment's start
    layer, i.e. after the segment's rule has been applied (the paper's
    intermediate heatmaps, Fig. 2C3).
    """
    out = {}
    for s in resolved.config.segments:
        out[f"after {s.name}"] = (s.start, "input")
    return out


def _channel_sum_to_grid(rel: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray | None:
    """Sum a captured (1, C, d, h, w) relevance over channels and bring it to ``shape``, keeping its total."""
    from .geometry import relevance_to_grid

    if rel.ndim != 5:
        return None
    summed = rel.detach().float().sum(dim=1)[0].cpu().numpy()
    return relevance_to_grid(summed[None], tuple(shape))[0].astype(np.float32)


def run_config(model: nn.Module, x: torch.Tensor, target: int, config: LrpConfig | None, ctx=None,
               capture: Iterable[str] = (), boundaries: bool = True):
    """Run LRP with a configuration; relevance (1, C, D, H, W) and what was used.

    Parameters
    ----------
    model : nn.Module
        Eager model returning (N, classes) (segmentation networks wrapped in
        :class:`~napari_xai.core.segmentation.SegmentationScores`).
    x : torch.Tensor
        Input (1, C, D, H, W).
    target : int
        Class to explain; the relevance injected at the output is its score.
    config : LrpConfig or None
        None uses :func:`default_config`.
    ctx : RunContext, optional
    capture : iterable of str
        Extra layers whose incoming relevance (at their output) is returned.
    boundaries : bool
        Also return the relevance at each segment boundary.

    Returns
    -------
    MethodOutput
        ``used`` holds the resolved rules, the conservation check and
        ``intermediate_sums``; ``used["_arrays"]["intermediate"]`` maps each
        capture point to a channel-summed (D, H, W) volume on the input grid
        (not JSON: the pipeline moves it to :attr:`Relevance.intermediate`);
        ``used["_arrays"]["captured"]`` holds the raw (1, C, ...) relevance
        tensor at each ``capture`` layer.
    """
    from zennit.core import Composite
    from zennit.layer import Sum

    from .methods._model import require_eager
    from .lrp import _norm_rule, _pass_rule, is_output_reduction, propagate, stabilizer_for
    from .lrp_rules import UnifiedRule
    from .methods.registry import MethodOutput, RunContext

    ctx = ctx if ctx is not None else RunContext()
    require_eager(model, ctx, "lrp", "LRP attaches rules to its layers")
    layers = list_layers(model, x)
    if config is None:
        config = default_config(layers)
    label = f"lrp '{config.name}'"
    resolved = resolve(config, layers)
    capture = list(capture)
    points: dict[str, tuple[str, str]] = boundary_points(resolved) if boundaries else {}
    for name in [*config.intermediate, *capture]:
        if name not in {l.name for l in layers}:
            raise _unknown(name, layers, "the intermediate layer list")
        points.setdefault(name, (name, "output"))
    stab = stabilizer_for(x.dtype)
    hooks = {n: UnifiedRule(r, zero_bias=config.zero_bias, stabilizer=stab) for n, r in resolved.rules.items()}
    norm, passthrough = _norm_rule(stab), _pass_rule()
    kinds = resolved.kinds

    def module_map(_ctx, name, module):
        if name in hooks:
            return hooks[name]
        kind = kinds.get(name)
        if kind == "sum" or isinstance(module, Sum) or is_output_reduction(module):
            return norm
        if kind == "pass":
            return passthrough
        return None

    filters = None
    if config.filter is not None:
        order = {l.name: l.index for l in layers}
        ruled = sorted(resolved.rules, key=lambda n: order.get(n, 0))
        # every rule layer but the last: at the output the relevance is the target score itself
        filters = (ruled[:-1], config.filter.apply)
    prop = propagate(model, x, target, label, ctx,
                     make_composite=lambda trace, canonizers: Composite(module_map=module_map, canonizers=canonizers),
                     rule_layers=lambda trace, modules: list(resolved.rules), points=points, stabilizer=stab,
                     filters=filters)
    modules = dict(model.named_modules())
    rel, r_out = prop.relevance, prop.output_relevance
    r_in = float(rel.sum())
    ratio = r_in / r_out if abs(r_out) > 1e-12 else float("nan")
    biased = [n for n in resolved.rules if getattr(modules.get(n), "bias", None) is not None
              and bool(torch.any(modules[n].bias.detach() != 0))]
    merged_bias = prop.merged_batchnorm  # merging BatchNorm adds a bias
    expected = resolved.conserving and config.filter is None  # a filter changes the relevance on purpose
    intermediate = {}
    sums_at: dict[str, float] = {}
    for key in points:
        t = prop.captured.get(key)
        if t is None:
            continue
        sums_at[key] = float(t.sum())
        vol = _channel_sum_to_grid(t, tuple(x.shape[2:]))
        if vol is not None:
            intermediate[key] = vol
    missing = [k for k in points if k not in prop.captured]
    if missing:
        ctx.warn(f"{label}: no relevance reached {', '.join(missing[:3])} (the layer's input is not on the path to the target).")
    used: dict[str, Any] = {
        "configuration": config.to_dict(),
        "segments": [
            {"name": s.name, "start": s.start, "end": s.end, "preset": s.preset, "formula": formula(s.rule),
             "first": a, "last": b, "rule_layers": sum(1 for o in resolved.owner.values() if o == s.name)}
            for s, (a, b) in zip(config.segments, resolved.spans)
        ],
        "default_rule_layers": sum(1 for o in resolved.owner.values() if o == ""),
        "merged_batchnorm": prop.merged_batchnorm,
        "residual_sums": prop.residual_sums,
        "gates": prop.gates,
        "output_relevance": r_out,
        "relevance_sum": r_in,
        "conservation": {"input": r_in, "output": r_out, "ratio": ratio, "expected": expected,
                         "biased_layers": len(biased) + merged_bias, "zero_bias": bool(config.zero_bias)},
        "intermediate_sums": sums_at,
        "filter": config.filter.to_dict() if config.filter is not None else None,
        "filtered_layers": prop.filtered,
        "_arrays": {"intermediate": intermediate,
                    "captured": {k: prop.captured[k] for k in capture if k in prop.captured}},
    }
    if not torch.isfinite(rel).all():
        ctx.warn(f"{label}: the relevance has NaN/Inf values; try a larger epsilon in the segment rules.")
    elif expected and not abs(ratio - 1.0) <= CONSERVATION_TOLERANCE:
        cause = (
            f"{len(biased) + merged_bias} rule layer(s) have biases, which absorb or add relevance (set zero_bias "
            "in the configuration to leave them out)"
            if (biased or merged_bias) and not config.zero_bias
            else "a layer or operation without an LRP rule changes it"
        )
        ctx.warn(
            f"{label}: relevance is not conserved: the input relevance sums to {r_in:.4g}, the target score "
            f"injected at the output is {r_out:.4g} (ratio {ratio:.3f}, more than {CONSERVATION_TOLERANCE:.0%} off); {cause}."
        )
    return MethodOutput(rel, used)
