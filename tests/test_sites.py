"""Sites: one parser, one slug, one set of TransformerLens hook names."""

import pytest

from raysae.config import ConfigError
from raysae.sites import SAESite, Site


def test_site_parse_and_names():
    assert Site.parse("res:12") == Site(12, "res") == Site.parse("12:res") == Site.parse((12, "res"))
    assert str(Site(3, "attn")) == "attn:3" and Site(3, "attn").tl_hook == "blocks.3.attn.hook_z"
    assert Site(5, "mlp_in").tl_hook == "blocks.5.ln2.hook_normalized"
    for bad, msg in (("res", "kind:layer"), ("bogus:1", "kind 'bogus'"), ("res:x", "'x'"),
                     ("res:-1", "non-negative")):
        with pytest.raises(ConfigError, match=msg):
            Site.parse(bad)
    with pytest.raises(ConfigError, match=r"layer must be in 0\.\.3"):
        Site(4, "res").check(n_layers=4)


def test_sae_sites_and_transcoder_pairs():
    tc = SAESite.parse("transcoder:5")
    assert tc == SAESite.parse("mlp_in:5->mlp:5") == SAESite(Site(5, "mlp_in"), Site(5, "mlp"))
    assert tc.is_transcoder and tc.layer == 5 and str(tc) == "transcoder:5"
    assert tc.slug == "transcoder_5" and tc.lm_sites == (Site(5, "mlp_in"), Site(5, "mlp"))
    res = SAESite.parse("12:res")
    assert not res.is_transcoder and str(res) == "res:12" and res.slug == "res_12"
    assert res.lm_sites == (Site(12, "res"),) and SAESite.parse(Site(12, "res")) == res
    assert SAESite.parse(res) == res
    with pytest.raises(ConfigError, match="mlp_in:L->mlp:L"):
        SAESite.parse("mlp_in:1->mlp:2")
    with pytest.raises(ConfigError, match="'transcoder:L'"):
        SAESite.parse("bogus:1")
    with pytest.raises(ConfigError, match="transcoder:x"):
        SAESite.parse("transcoder:x")


def test_site_map_takes_strings_and_sites():
    from raysae.sites import Site, SiteMap

    acts = SiteMap({Site(2, "res"): "a", Site(0, "mlp_in"): "b"})
    assert acts["res:2"] == acts[Site(2, "res")] == "a" and acts.get("mlp_in:0") == "b"
    assert "res:2" in acts and "res:3" not in acts and acts.get("nonsense") is None
    with pytest.raises(KeyError):
        acts["res:3"]
    assert list(acts) == [Site(2, "res"), Site(0, "mlp_in")]   # keys stay Sites
