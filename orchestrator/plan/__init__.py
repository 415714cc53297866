"""`moss plan`: checks that need neither Ray nor weights, run before any cluster work (design.md)."""

from .planner import Plan, Planner, Row

__all__ = ["Plan", "Planner", "Row"]
