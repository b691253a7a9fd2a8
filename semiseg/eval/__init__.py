"""Evaluation: metrics, robustness, uncertainty, statistics across runs, the report, and the orchestration of a
run's test evaluation (``run_evaluation``). Whole-case inference itself is the engine's ``Inferer``."""
