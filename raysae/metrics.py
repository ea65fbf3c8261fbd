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
DEAD_WINDOW_FRACTION = "dead_window_fraction"  # latents that fired on no row in the last
                                               # TrainConfig.dead_window_steps steps

# Evaluation (raysae.evals summaries); a trial reports them with the ``eval/`` prefix.
DELTA_LOSS = "delta_loss"                      # LM loss with the SAE spliced in − clean loss
DEAD_LATENTS = "dead_latents"                  # latents that fired on no token of the
DEAD_LATENT_FRACTION = "dead_latent_fraction"  # frequency sample (and their share)
EVAL_PREFIX = "eval/"
EVAL_L0 = EVAL_PREFIX + L0
EVAL_FVU = EVAL_PREFIX + FVU
EVAL_MSE = EVAL_PREFIX + MSE                   # raw activation space
EVAL_DELTA_LOSS = EVAL_PREFIX + DELTA_LOSS
EVAL_DEAD_LATENTS = EVAL_PREFIX + DEAD_LATENTS
EVAL_DEAD_LATENT_FRACTION = EVAL_PREFIX + DEAD_LATENT_FRACTION
EVAL_NUM_TOKENS = EVAL_PREFIX + "num_tokens"

# A trial's own fields.
TRIAL = "trial"                                # the trial's stable key (sweep.trainable.trial_key)
MEMBERS = "members"                            # a packed trial's report: {SAE key: its row}
SAE_URL = "sae_url"                            # where the trial saved its SAE
RESTORED_STEP = "restored_step"                # the step training resumed from (0: fresh)
PID = "pid"                                    # the trial process (or JAX process 0's) pid
NODE = "node_id"                               # the Ray node the trial process ran on
PROCESSES = "processes"                        # JAX processes of the trial
DEVICES = "devices"                            # devices of its mesh
DEVICE_ENV = "device_env"                      # {var: value}: the device variables it ran with

# The shared stream's counters (raysae.stream.BatchStream.metrics).
STREAM_START = "stream/start"                  # the global index the trial's stream opened at
STREAM_POSITION = "stream/position"
STREAM_DELIVERED = "stream/delivered"
STREAM_MISSED = "stream/missed"
STREAM_LOOPED = "stream/looped"
STREAM_LOOPED_BYTES = "stream/looped_bytes"
STREAM_BROKER_RETRIES = "stream/broker_retries"
