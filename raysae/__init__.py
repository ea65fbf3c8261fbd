"""raysae: JumpReLU sparse autoencoders trained the Gemma Scope way, swept on Ray.

Data flows lm -> activations -> stream -> train -> evals -> sweep. The JAX core
(`sae`, `train`, `lm`, `evals`) never imports Ray; Ray lives in `activations`,
`stream` and `sweep`, so one SAE can be trained in a notebook without a cluster.
"""

__version__ = "0.1.0"
