"""Batched, per-sample augmentation on the batch's device, and named recipes."""

from replearn.views.recipes import RECIPES, ViewRecipe, eval_view, multi_crop, recipe, weak_view

__all__ = ["RECIPES", "ViewRecipe", "eval_view", "multi_crop", "recipe", "weak_view"]
