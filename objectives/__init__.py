"""Losses as pure functions."""
from objectives.regression import gaussian_nll, half_mse, mse

__all__ = ["half_mse", "mse", "gaussian_nll"]
