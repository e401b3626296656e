"""The shared toolkit: models, activations, SAEs, features, steering, judges, LLM clients, stats, text, plots,
widgets, data. ``core`` imports neither ``helpers.studies`` nor ``helpers.harness`` (tests/test_layering.py)."""
