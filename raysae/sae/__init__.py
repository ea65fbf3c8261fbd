"""The JumpReLU SAE model: parameters, estimators, forward/loss, folding and file formats.

Pure JAX/numpy, no Ray. The pieces:

- `params`     SAEParams (Gemma Scope names and shapes) and the paper's initialisation
- `jumprelu`   JumpReLU and Heaviside with the straight-through pseudo-derivatives
- `model`      encode / decode / the training loss with its parts
- `sparse`     the same loss through a sparse decoder (only the latents each row uses)
- `fold`       App. A folding of the normalisation scalar C into the weights, and back
- `formats`    Gemma Scope `params.npz` and SAELens `cfg.json` + safetensors
"""

from raysae.sae.params import SAEParams, init_params
from raysae.sae.jumprelu import jumprelu, heaviside
from raysae.sae.model import encode, decode, forward, loss_fn, LossParts
from raysae.sae.fold import fold, unfold

__all__ = [
    "SAEParams", "init_params", "jumprelu", "heaviside", "encode", "decode", "forward",
    "loss_fn", "LossParts", "fold", "unfold",
]
