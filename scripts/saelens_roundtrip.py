"""By-hand check that an SAE saved by raysae loads in sae-lens and computes the same thing.

Needs two environments (sae-lens pulls in torch and transformer-lens, which raysae does not):

    .venv/bin/python scripts/saelens_roundtrip.py save /tmp/sl_check          # raysae side
    OTHER_VENV/bin/python scripts/saelens_roundtrip.py check /tmp/sl_check    # pip install sae-lens

`save` writes a random JumpReLU SAE in SAELens format plus inputs and raysae's latents and
reconstructions; `check` loads it with `sae_lens.SAE.load_from_disk` and compares.
"""

import sys

import numpy as np


def save(path: str) -> None:
    import jax

    from raysae.sae import encode, forward, init_params
    from raysae.sae.formats import save_saelens

    p = init_params(jax.random.PRNGKey(0), 16, 40)
    p = p._replace(b_enc=p.b_enc + 0.01, b_dec=p.b_dec + 0.1, threshold=p.threshold * 50)
    save_saelens(p, path, model_name="tiny", hook_name="blocks.1.hook_resid_post", hook_layer=1)
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    np.savez(f"{path}/expected.npz", x=x, f=np.asarray(encode(p, x)), y=np.asarray(forward(p, x)))


def check(path: str) -> None:
    import torch
    from sae_lens import SAE

    sae = SAE.load_from_disk(path, device="cpu")
    want = np.load(f"{path}/expected.npz")
    x = torch.from_numpy(want["x"])
    f = sae.encode(x).detach().numpy()
    y = sae.decode(sae.encode(x)).detach().numpy()
    print(type(sae).__name__, "d_in", sae.cfg.d_in, "d_sae", sae.cfg.d_sae,
          "active fraction", float((f > 0).mean()))
    print("max |Δ latents|", float(np.abs(f - want["f"]).max()),
          "max |Δ reconstruction|", float(np.abs(y - want["y"]).max()))
    assert np.allclose(f, want["f"], atol=1e-5) and np.allclose(y, want["y"], atol=1e-5)


if __name__ == "__main__":
    {"save": save, "check": check}[sys.argv[1]](sys.argv[2])
