"""SAELens directories: `cfg.json` + `sae_weights.safetensors`, as `sae_lens.SAE.load_from_disk`
reads them (SAELens >= 6 layout: the run's facts under "metadata").

What SAELens and Neuronpedia read is written: the architecture ("jumprelu", or
"jumprelu_transcoder" for an App. B transcoder), d_in / d_sae (/ d_out), raw activation space
(no run-time normalisation, b_dec not applied to the input: a folded SAE), and metadata with
the model's Hugging Face / TransformerLens name, the hook names of the typed site, the context
size and the dataset. raysae's own training facts go under "raysae".
"""

from __future__ import annotations

import json
from typing import Any

import safetensors.numpy

from raysae import storage
from raysae.sae.formats import SAEFormatError, to_numpy, validate_arrays
from raysae.sae.params import SAEParams
from raysae.sites import ATTN, SAESite

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
# The cfg.json layout written: SAELens reads configs of 6.0 and later as they are (older ones
# go through its pre-6 conversion, which would default apply_b_dec_to_input to true).
FORMAT_VERSION = "6.0.0"
ARCHITECTURES = ("jumprelu", "jumprelu_transcoder")


def saelens_config(params: SAEParams, *, model_name: str | None = None,
                   site: SAESite | str | None = None, hook_name: str | None = None,
                   context_size: int | None = None, dataset_path: str | None = None,
                   neuronpedia_id: str | None = None, extra: dict | None = None) -> dict:
    """The cfg.json of a folded JumpReLU SAE or transcoder.

    Args:
        params: the folded SAE (raw activation space).
        model_name: the model's Hugging Face / TransformerLens name ("gemma-2-2b").
        site: the raysae site ("res:12", "transcoder:5"): sets the hook names (and hook_z
            reshaping for attention sites); without it give `hook_name`.
        context_size: the training context length.
        dataset_path: the dataset the activations came from.
        neuronpedia_id: the SAE's Neuronpedia id, if it has one.
        extra: raysae's own training metadata (under "raysae").
    Returns:
        The cfg dict.
    """
    site = SAESite.parse(site) if site is not None else None
    if site is not None:
        hook_name = site.input.tl_hook
    metadata: dict[str, Any] = {
        "sae_lens_version": FORMAT_VERSION, "sae_lens_training_version": None,
        "model_name": model_name, "hook_name": hook_name, "hook_head_index": None,
        "model_class_name": "HookedTransformer", "model_from_pretrained_kwargs": {},
        "prepend_bos": True, "exclude_special_tokens": True, "context_size": context_size,
        "seqpos_slice": [None], "dataset_path": dataset_path, "neuronpedia_id": neuronpedia_id,
    }
    cfg: dict[str, Any] = {
        "architecture": "jumprelu", "d_in": int(params.W_enc.shape[0]),
        "d_sae": int(params.W_enc.shape[1]), "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": False, "normalize_activations": "none",
        "reshape_activations": "hook_z" if site is not None and site.input.kind == ATTN else "none",
    }
    if site is not None and site.is_transcoder:
        cfg.update(architecture="jumprelu_transcoder", d_out=int(params.W_dec.shape[1]))
        metadata.update(hook_name_out=site.target.tl_hook, hook_head_index_out=None)
    cfg["metadata"] = metadata
    if extra:
        cfg["raysae"] = extra
    return cfg


def save_saelens(params: SAEParams, url: str, **cfg_kwargs: Any) -> str:
    """Write a SAELens directory (`cfg.json` + `sae_weights.safetensors`) at `url`.

    Args:
        params: the folded SAE.
        url: the directory (any fsspec URL).
        **cfg_kwargs: `saelens_config`'s metadata (model_name, site, context_size, ...).
    Returns:
        `url`.
    """
    weights = safetensors.numpy.save(to_numpy(params))
    storage.write_bytes_atomic(storage.join(url, WEIGHTS_NAME), weights)
    cfg = saelens_config(params, **cfg_kwargs)
    storage.write_bytes_atomic(storage.join(url, CFG_NAME), json.dumps(cfg, indent=2).encode())
    return url


def metadata(cfg: dict) -> dict:
    """The metadata of a cfg.json: "metadata" (SAELens >= 6), else the top-level keys of older
    configs (and the "meta" block raysae wrote before)."""
    if isinstance(cfg.get("metadata"), dict):
        return cfg["metadata"]
    return {**{k: v for k, v in cfg.items() if not isinstance(v, dict)}, **(cfg.get("meta") or {})}


def load_saelens(url: str) -> tuple[SAEParams, dict]:
    """Read a SAELens JumpReLU directory (raysae's or SAELens's own).

    Returns:
        (params in raw activation space with no pre-encoder bias, the cfg dict).
    Raises:
        SAEFormatError naming the file and key for anything raysae cannot run exactly.
    """
    cfg_url = storage.join(url, CFG_NAME)
    w_url = storage.join(url, WEIGHTS_NAME)
    try:
        cfg = json.loads(storage.read_bytes(cfg_url))
    except FileNotFoundError:
        raise SAEFormatError(f"{cfg_url}: file not found") from None
    except json.JSONDecodeError as e:
        raise SAEFormatError(f"{cfg_url}: not valid JSON ({e})") from None
    arch = cfg.get("architecture")
    if arch not in ARCHITECTURES:
        raise SAEFormatError(f"{cfg_url}: key 'architecture' is {arch!r}, expected one of "
                             f"{list(ARCHITECTURES)}")
    try:
        arrays = safetensors.numpy.load(storage.read_bytes(w_url))
    except FileNotFoundError:
        raise SAEFormatError(f"{w_url}: file not found") from None
    except Exception as e:
        raise SAEFormatError(f"{w_url}: not a readable safetensors file ({e})") from None
    params = validate_arrays(arrays, w_url)
    for key, got in (("d_in", params.W_enc.shape[0]), ("d_sae", params.W_enc.shape[1])):
        if key in cfg and cfg[key] != got:
            raise SAEFormatError(f"{cfg_url}: key {key!r} is {cfg[key]} but the weights have {got}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        # Run-time input normalisation is not part of the five tensors: evaluating such an
        # SAE on raw activations would silently give wrong numbers.
        raise SAEFormatError(f"{cfg_url}: key 'normalize_activations' is {norm!r}; only 'none' "
                             "(raw activation space) is supported")
    if cfg.get("apply_b_dec_to_input"):
        # SAELens subtracts b_dec before encoding: fold it so our encode (no pre-bias) matches.
        params = params._replace(b_enc=params.b_enc - params.b_dec @ params.W_enc)
    return params, cfg
