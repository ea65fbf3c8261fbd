"""Packs: K SAEs of one width trained as one, by `jax.vmap` of the step over a member axis.

The SAEs of a sweep's (site, width) read the same batches. A `Pack` trains them in one
step on one batch: every leaf of the `TrainState` gets a leading member axis, the batch is
broadcast to every member, and each member's λ and lr enter as `Knobs` arrays instead of
the static config's values. The rest of the recipe is shared, since it shapes the step's
program (width, batch, steps and the schedules' lengths). Each member starts from the
state a lone run of its config would (its own `seed`), so member i of a packed run is the
SAE its config trains alone (tests/train/test_pack.py).

Widths are not packed: a stack holds one shape, and the sweep gives each width its own
step budget (`SweepConfig.steps_for`), so members of two widths would neither share a
stack nor stop at the same step; they train as separate packs (separate trials).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from raysae.config import ConfigError
from raysae.train.config import TrainConfig
from raysae.train.step import Knobs, StepMetrics, TrainState, init_state, train_step

PACKED_FIELDS = ("sparsity_coefficient", "lr", "seed")  # what the members of a pack may vary


@dataclasses.dataclass(frozen=True)
class Pack:
    """The recipes of the SAEs trained together; they differ only in `PACKED_FIELDS`.

    Raises:
        ConfigError naming the first other field in which two members differ.
    """

    members: tuple[TrainConfig, ...]

    def __post_init__(self):
        object.__setattr__(self, "members", tuple(self.members))
        if not self.members:
            raise ConfigError("pack: a pack needs at least one member")
        base = self.base
        for i, c in enumerate(self.members[1:], 1):
            for f in dataclasses.fields(TrainConfig):
                if f.compare and f.name not in PACKED_FIELDS and \
                        getattr(c, f.name) != getattr(base, f.name):
                    raise ConfigError(
                        f"pack: member {i} has {f.name}={getattr(c, f.name)!r} but member 0 "
                        f"{getattr(base, f.name)!r}; a pack's SAEs may differ only in "
                        f"{', '.join(PACKED_FIELDS)}")

    @property
    def base(self) -> TrainConfig:
        """The shared recipe (member 0's config; its λ, lr and seed are not used in a step)."""
        return self.members[0]

    def __len__(self) -> int:
        return len(self.members)

    def knobs(self) -> Knobs:
        """Each member's λ and lr, as [K] float32 arrays."""
        return Knobs(jnp.asarray([c.sparsity_coefficient for c in self.members], jnp.float32),
                     jnp.asarray([c.lr for c in self.members], jnp.float32))

    def init_state(self, d: int, d_out: int | None = None) -> TrainState:
        """The members' fresh states (each what `init_state(member, d)` gives), stacked."""
        return stack([init_state(c, d, d_out=d_out) for c in self.members])


def stack(trees: Sequence[Any]) -> Any:
    """Pytrees of one structure -> one pytree with a leading member axis on every leaf."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree: Any, i: int) -> Any:
    """Member `i` of a stacked pytree (the leading axis dropped)."""
    return jax.tree.map(lambda x: x[i], tree)


def member_row(row: dict, i: int) -> dict:
    """Member `i`'s metrics from a packed run's history row (per-member values are lists)."""
    return {k: v[i] if isinstance(v, list) else v for k, v in row.items()}


def packed_train_step(state: TrainState, x: jax.Array, target: jax.Array | None,
                      config: TrainConfig, knobs: Knobs) -> tuple[TrainState, StepMetrics]:
    """`train_step` of every member of a stacked state on one batch (pure; jit it).

    Args:
        state: the members' states, stacked (`Pack.init_state`).
        x, target: the batch, as for `train_step` (shared by every member).
        config: the shared recipe (`Pack.base`).
        knobs: each member's λ and lr ([K] arrays, `Pack.knobs`).
    Returns:
        (the new stacked state, `StepMetrics` of [K] arrays).
    """
    return jax.vmap(lambda s, k: train_step(s, x, target, config, k))(state, knobs)


__all__ = ["PACKED_FIELDS", "Pack", "stack", "member", "member_row", "packed_train_step"]
