"""JumpReLU and Heaviside step with the Gemma Scope straight-through estimators.

Forward: JumpReLU(z; θ) = z · H(z − θ) and H(z − θ). Backward uses a rectangle kernel
K(u) = 1{|u| < ½} with bandwidth ε (default 0.001):

    ∂JumpReLU/∂z = H(z − θ)                      (the true derivative)
    ∂JumpReLU/∂θ = −(θ/ε) · K((z − θ)/ε)         (pseudo-derivative)
    ∂H/∂z        = 0                              (the L0 term sends nothing to z)
    ∂H/∂θ        = −(1/ε) · K((z − θ)/ε)         (pseudo-derivative)

Both are `jax.custom_vjp`s; θ broadcasts over leading batch axes and its cotangent is
summed back to θ's shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

DEFAULT_BANDWIDTH = 0.001


def rectangle(u: jax.Array) -> jax.Array:
    """K(u) = 1 where |u| < 1/2, else 0 (same dtype as u)."""
    return (jnp.abs(u) < 0.5).astype(u.dtype)


def _sum_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum a broadcast cotangent back to `shape` (θ is [M], z is [..., M])."""
    lead = x.ndim - len(shape)
    return x.sum(axis=tuple(range(lead))) if lead else x


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(z: jax.Array, theta: jax.Array, bandwidth: float = DEFAULT_BANDWIDTH) -> jax.Array:
    return z * (z > theta).astype(z.dtype)


def _jumprelu_fwd(z, theta, bandwidth):
    return jumprelu(z, theta, bandwidth), (z, theta)


def _jumprelu_bwd(bandwidth, res, g):
    z, theta = res
    dz = g * (z > theta).astype(g.dtype)
    dtheta = -(theta / bandwidth) * rectangle((z - theta) / bandwidth) * g
    return dz, _sum_to(dtheta, theta.shape).astype(theta.dtype)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def heaviside(z: jax.Array, theta: jax.Array, bandwidth: float = DEFAULT_BANDWIDTH) -> jax.Array:
    return (z > theta).astype(z.dtype)


def _heaviside_fwd(z, theta, bandwidth):
    return heaviside(z, theta, bandwidth), (z, theta)


def _heaviside_bwd(bandwidth, res, g):
    z, theta = res
    dtheta = -(1.0 / bandwidth) * rectangle((z - theta) / bandwidth) * g
    return jnp.zeros_like(z), _sum_to(dtheta, theta.shape).astype(theta.dtype)


heaviside.defvjp(_heaviside_fwd, _heaviside_bwd)
