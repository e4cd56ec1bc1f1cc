"""Evaluation with inspect-ai: a `cookbook` model provider that serves our models with our
renderers, bundled offline tasks (`cookbook/ifeval`, `cookbook/preference`), and the
`python -m cookbook.eval.run_inspect_evals` command that runs them and prints a metrics table.

Submodules import inspect-ai and torch lazily where they can, so `import cookbook.eval` is cheap.
"""
