"""The Concepts dock (issue 15): top concepts of a layer (CRP), their heatmaps, a comparison grid, references."""

from .widget import ConceptsWidget

__all__ = ["ConceptsWidget"]
