"""Metric names: the keys of training histories, trial reports and frontier rows.

One place for them, so the trainer, the sweep's reports, its Pareto callback and a user's
Tune searcher (`metric="eval/delta_loss"`) agree. Training metrics are the fields of
`raysae.train.StepMetrics`; final evaluation metrics carry the ``eval/`` prefix.
"""

# Training, every `log_every` steps.
STEP = "step"                                  # optimiser steps done
TOKENS = "tokens"                              # training rows seen (steps × batch size)
LOSS = "loss"
MSE = "mse"                                    # mean ‖x − x̂‖² (normalised space)
FVU = "fvu"                                    # fraction of variance unexplained
L0 = "l0"                                      # mean active latents per row
SPARSITY_LOSS = "sparsity_loss"
SPARSITY_COEFFICIENT = "sparsity_coefficient"  # λ after its warmup
LR = "lr"
DEAD_FRACTION = "dead_fraction"                # latents not fired in the dead window

# The trial's final evaluation of the saved SAE.
EVAL_PREFIX = "eval/"
EVAL_L0 = "eval/l0"
EVAL_FVU = "eval/fvu"
EVAL_MSE = "eval/mse"                          # raw activation space
EVAL_DELTA_LOSS = "eval/delta_loss"            # LM loss with the SAE spliced in − clean loss
SAE_URL = "sae_url"                            # where the trial saved its SAE

# The shared stream's counters (raysae.stream.BatchStream.metrics).
STREAM_POSITION = "stream/position"
STREAM_DELIVERED = "stream/delivered"
STREAM_MISSED = "stream/missed"
STREAM_LOOPED = "stream/looped"
STREAM_LOOPED_BYTES = "stream/looped_bytes"
STREAM_BROKER_RETRIES = "stream/broker_retries"
