"""Bayesian optimisation with PFN and GP surrogates: problems, tasks, acquisitions, the loop."""
