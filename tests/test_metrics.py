"""Metric names: one module, matching the fields that produce them."""

from raysae import metrics


def test_metric_names_are_the_step_metrics_fields():
    from raysae import metrics
    from raysae.train import StepMetrics

    for field in StepMetrics._fields:
        assert getattr(metrics, field.upper()) == field


def test_eval_names_are_the_prefixed_summary_keys():
    from raysae.evals.report import SCALARS

    for name in ("L0", "FVU", "MSE", "DELTA_LOSS", "DEAD_LATENTS", "DEAD_LATENT_FRACTION"):
        key = getattr(metrics, name)
        assert key in SCALARS and getattr(metrics, "EVAL_" + name) == metrics.EVAL_PREFIX + key
