"""LRP configurations: segments of layers with rules, named JSON configurations, filters.

A configuration (the LRP designer's "model", after Huang et al.) gives each
Conv/Linear layer a rule: by segment (a start and an end layer in execution
order), else by the optional ``first``/``dense`` rules, else the ``default``.
The presets of the ``lrp-*`` methods are configurations too
(``composites.py``). File format and examples: ``docs/lrp-designer.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from .params import PRESETS, Rule, RuleParams, match_preset, params_from_dict, rule_from_dict, rule_label, rule_to_dict
from .types import LAYER_RULES

__all__ = [
    "FORMAT", "LIBRARY_FORMAT", "LayerFilter", "LrpConfig", "Segment", "load_config", "load_configs", "save_configs",
]

FORMAT = "napari-xai/lrp-config"
LIBRARY_FORMAT = "napari-xai/lrp-configs"
VERSION = 1


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
    default : Rule
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
    first : Rule or None
        Rule of the Conv/Linear layers outside every segment that receive the raw
        input (Zennit's special first layer); None: as the others.
    dense : Rule or None
        Rule of the ``nn.Linear`` layers outside every segment; None: ``default``.
    """

    name: str = "configuration"
    segments: list[Segment] = field(default_factory=list)
    default: Rule = field(default_factory=RuleParams)
    zero_bias: bool = False
    layer_rules: dict[str, str] = field(default_factory=dict)
    intermediate: list[str] = field(default_factory=list)
    description: str = ""
    filter: "LayerFilter | None" = None
    first: "Rule | None" = None
    dense: "Rule | None" = None

    def to_dict(self) -> dict:
        out = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "description": self.description,
            "zero_bias": bool(self.zero_bias),
            "default": rule_to_dict(self.default),
            "segments": [s.to_dict() for s in self.segments],
            "layer_rules": dict(self.layer_rules),
            "intermediate": list(self.intermediate),
            "filter": self.filter.to_dict() if self.filter is not None else None,
        }
        for key in ("first", "dense"):  # only the composites set them; files without them stay as they were
            if getattr(self, key) is not None:
                out[key] = rule_to_dict(getattr(self, key))
        return out

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
                 "filter", "first", "dense"}
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
            segments.append(Segment(start=str(s["start"]), end=str(s["end"]), rule=params_from_dict(s, sw),
                                    name=str(s.get("name") or f"segment {i + 1}")))
        rules = data.get("layer_rules") or {}
        if not isinstance(rules, dict) or any(v not in LAYER_RULES for v in rules.values()):
            raise UserError(f"{where}: 'layer_rules' maps layer names to one of {', '.join(LAYER_RULES)}.")
        inter = data.get("intermediate") or []
        if not isinstance(inter, list):
            raise UserError(f"{where}: 'intermediate' must be a list of layer names.")
        cfg = cls(name=name, segments=segments, default=rule_from_dict(data.get("default"), f"{where} default rule"),
                  zero_bias=bool(data.get("zero_bias", False)), layer_rules={str(k): str(v) for k, v in rules.items()},
                  intermediate=[str(v) for v in inter], description=str(data.get("description") or ""),
                  filter=LayerFilter.from_dict(data.get("filter"), where),
                  **{k: rule_from_dict(data[k], f"{where} {k} rule") for k in ("first", "dense") if data.get(k)})
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
        default = PRESETS.get(rule_label(self.default))
        rest = f"rest {default.title if default else 'custom'}"
        return f"{self.name}: " + " | ".join(parts + [rest])


def load_configs(path: str | Path) -> tuple[list[LrpConfig], str | None]:
    """Read a configuration file (one configuration or a library); returns (configurations, active name)."""
    path = Path(path)
    from ..models.bundle_config import read_config_file  # the models package imports torch: only when reading a file

    data = read_config_file(path, "LRP configuration", yaml_format=False)
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
    from ..volumes import atomic_write_bytes

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
