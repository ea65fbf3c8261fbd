"""Activation sites: where in Gemma 2 an SAE reads, and what it reconstructs.

`Site(layer, kind)` is one place in the LM's forward pass ("res:12"). `SAESite` is what one
SAE is trained on: an input site and a target site, the same site for an SAE and the pair
(mlp_in:L, mlp:L) for a transcoder (Gemma Scope App. B). This module is the only one that
parses sites or names them: YAML / CLI strings, path slugs, and the TransformerLens hook
names SAELens attaches SAEs to.
"""

from __future__ import annotations

from typing import NamedTuple

from raysae.config import ConfigError

ATTN, MLP, RES, MLP_IN, RES_MID = "attn", "mlp", "res", "mlp_in", "res_mid"
# attn: concatenated head outputs (the input of o_proj); mlp: MLP output after the
# post-feedforward norm; res: the residual stream after the block; mlp_in: the MLP input just
# after the pre-feedforward RMSNorm with its gain folded into the MLP (rows of norm √d_model:
# a Gemma Scope transcoder's input, App. B); res_mid: the residual stream between the
# attention and MLP branches (the un-normalised MLP input).
SITE_KINDS = (ATTN, MLP, RES, MLP_IN, RES_MID)
TRANSCODER = "transcoder"

# Site kind -> the TransformerLens hook of Gemma 2 that holds the same activations.
_TL_HOOKS = {
    RES: "blocks.{layer}.hook_resid_post",
    MLP: "blocks.{layer}.hook_mlp_out",
    ATTN: "blocks.{layer}.attn.hook_z",          # [.., heads, d_head]: SAELens reshapes it
    MLP_IN: "blocks.{layer}.ln2.hook_normalized",   # gain-free with fold_ln=True, as here
    RES_MID: "blocks.{layer}.hook_resid_mid",
}


def _layer(text: str, value: str) -> int:
    if not value.strip().isdigit():
        raise ConfigError(f"site {text!r}: layer {value!r} is not a non-negative integer")
    return int(value)


class Site(NamedTuple):
    """One activation site of the LM: `Site(12, "res")`, written "res:12"."""

    layer: int
    kind: str

    @classmethod
    def parse(cls, text: "str | Site | tuple") -> "Site":
        """A Site from "res:12" (or "12:res", an existing Site, or a (layer, kind) pair).

        Raises:
            ConfigError naming the text when the kind or layer is not valid.
        """
        if isinstance(text, Site):
            return text.check()
        if isinstance(text, tuple) and len(text) == 2:
            return cls(int(text[0]), str(text[1])).check()
        parts = str(text).strip().split(":")
        if len(parts) != 2:
            raise ConfigError(f"site {text!r}: expected 'kind:layer' such as 'res:12'")
        a, b = (p.strip() for p in parts)
        kind, layer = (b, a) if a.isdigit() else (a, b)
        return cls(_layer(str(text), layer), kind).check()

    def check(self, n_layers: int | None = None) -> "Site":
        """This site, or ConfigError if its kind is unknown or its layer out of range."""
        if self.kind not in SITE_KINDS:
            raise ConfigError(f"site {self}: kind {self.kind!r} is not one of {list(SITE_KINDS)}")
        if self.layer < 0 or (n_layers is not None and self.layer >= n_layers):
            bound = f"0..{n_layers - 1}" if n_layers is not None else ">= 0"
            raise ConfigError(f"site {self}: layer must be in {bound}")
        return self

    @property
    def tl_hook(self) -> str:
        """The TransformerLens hook name of this site on Gemma 2."""
        return _TL_HOOKS[self.kind].format(layer=self.layer)

    def __str__(self) -> str:
        return f"{self.kind}:{self.layer}"


class SAESite(NamedTuple):
    """What one SAE reads (`input`) and reconstructs (`target`).

    "res:12" is an SAE on res:12; "transcoder:5" (or "mlp_in:5->mlp:5") a transcoder that
    reads layer 5's MLP input and predicts its MLP output.
    """

    input: Site
    target: Site

    @classmethod
    def parse(cls, text: "str | SAESite | Site") -> "SAESite":
        """An SAESite from its string form (see the class docstring), a Site or an SAESite.

        Raises:
            ConfigError naming the text when it is not a valid site.
        """
        if isinstance(text, SAESite):
            return cls(text.input.check(), text.target.check()).check()
        if isinstance(text, Site):
            s = text.check()
            return cls(s, s)
        raw = str(text).strip()
        if raw.startswith(TRANSCODER + ":"):
            layer = _layer(raw, raw.split(":", 1)[1])
            return cls(Site(layer, MLP_IN), Site(layer, MLP))
        if "->" in raw:
            a, b = raw.split("->", 1)
            return cls(Site.parse(a), Site.parse(b)).check()
        try:
            s = Site.parse(raw)
        except ConfigError as e:
            raise ConfigError(f"{e} (or '{TRANSCODER}:L')") from None
        return cls(s, s)

    def check(self, n_layers: int | None = None) -> "SAESite":
        """This site, or ConfigError: a pair must be (mlp_in:L, mlp:L); layers in range."""
        self.input.check(n_layers)
        self.target.check(n_layers)
        if self.input != self.target and (
                (self.input.kind, self.target.kind) != (MLP_IN, MLP)
                or self.input.layer != self.target.layer):
            raise ConfigError(f"site {self.input}->{self.target}: a transcoder pair must be "
                              f"mlp_in:L->mlp:L")
        return self

    @property
    def is_transcoder(self) -> bool:
        return self.input != self.target

    @property
    def layer(self) -> int:
        return self.target.layer

    @property
    def lm_sites(self) -> tuple[Site, ...]:
        """The LM sites the forward pass must read: (input,) or (input, target)."""
        return (self.input, self.target) if self.is_transcoder else (self.input,)

    @property
    def slug(self) -> str:
        """A path-safe name: "res_12", "transcoder_5"."""
        return str(self).replace(":", "_")

    def __str__(self) -> str:
        return f"{TRANSCODER}:{self.layer}" if self.is_transcoder else str(self.input)


class SiteMap(dict):
    """A dict keyed by `Site` that also takes a site's string: ``acts["res:2"]`` is
    ``acts[Site(2, "res")]`` (what a user types, and what a dict of Sites prints as)."""

    @staticmethod
    def _site(key):
        if isinstance(key, str):
            try:
                return Site.parse(key)
            except ConfigError:
                return key   # not a site: a plain (missing) key
        return key

    def __getitem__(self, key):
        return super().__getitem__(self._site(key))

    def __contains__(self, key) -> bool:
        return super().__contains__(self._site(key))

    def get(self, key, default=None):
        return super().get(self._site(key), default)


__all__ = ["ATTN", "MLP", "RES", "MLP_IN", "RES_MID", "SITE_KINDS", "TRANSCODER", "Site", "SAESite",
           "SiteMap"]
