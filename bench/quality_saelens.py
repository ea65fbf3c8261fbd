"""Train one SAELens JumpReLU SAE on rows from a .npy file (run by bench/quality.py in the
SAELens venv, never imported by raysae). Writes Gemma Scope-layout params.npz (raw space,
no pre-encoder bias: SAELens's b_dec-on-input is folded into b_enc) and a small JSON.

    .venv-saelens/bin/python bench/quality_saelens.py --train rows.npy --steps 6000 \
        --batch 1024 --width 1024 --l0-coefficient 5 --out run/params.npz

SAELens's own defaults are kept unless a flag says otherwise: JumpReLU bandwidth 0.05,
θ₀ 0.01, decoder init norm 0.1, Adam (0.9, 0.999), constant lr, grad-norm clip 1.0 (built
into its trainer), no activation normalisation, no L0 warm-up.
"""

import argparse
import json
import time

import numpy as np
import torch
from sae_lens import __version__ as saelens_version
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer


class Rows:
    """Batches i = rows[i·B:(i+1)·B] of a memory-mapped .npy, in order."""

    def __init__(self, path, batch):
        self.rows = np.load(path, mmap_mode="r")
        self.batch = batch
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        lo = self.i * self.batch
        if lo + self.batch > len(self.rows):
            raise StopIteration
        self.i += 1
        return torch.from_numpy(np.array(self.rows[lo:lo + self.batch], np.float32))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--l0-coefficient", type=float, required=True)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bandwidth", type=float, default=0.05)
    ap.add_argument("--theta0", type=float, default=0.01)
    ap.add_argument("--l0-warmup", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    data = Rows(a.train, a.batch)
    d = data.rows.shape[1]
    cfg = JumpReLUTrainingSAEConfig(d_in=d, d_sae=a.width, l0_coefficient=a.l0_coefficient,
                                    jumprelu_bandwidth=a.bandwidth,
                                    jumprelu_init_threshold=a.theta0,
                                    l0_warm_up_steps=a.l0_warmup, normalize_activations="none")
    sae = JumpReLUTrainingSAE(cfg)
    tcfg = SAETrainerConfig(total_training_samples=a.steps * a.batch,
                            train_batch_size_samples=a.batch, lr=a.lr, lr_end=a.lr,
                            logger=LoggingConfig(log_to_wandb=False,
                                                 eval_every_n_wandb_logs=2**31 - 1))
    t0 = time.perf_counter()
    SAETrainer(cfg=tcfg, sae=sae, data_provider=data).fit()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        p = {k: getattr(sae, k).detach().float().numpy() for k in
             ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    if sae.cfg.apply_b_dec_to_input:
        p["b_enc"] = p["b_enc"] - p["b_dec"] @ p["W_enc"]
    np.savez(a.out, **{k: v.astype(np.float32) for k, v in p.items()})
    with open(a.out + ".json", "w") as f:
        json.dump({"saelens_version": saelens_version, "seconds": seconds,
                   "apply_b_dec_to_input": bool(sae.cfg.apply_b_dec_to_input),
                   "decoder_init_norm": sae.cfg.decoder_init_norm, **vars(a)}, f)


if __name__ == "__main__":
    main()
