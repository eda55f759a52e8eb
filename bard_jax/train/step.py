"""The pure train step: gradient accumulation over micro-batches, clipping + AdamW, a NaN guard.

`train_step(state, batch, teacher_params, healthy=None) -> (state, metrics)` is built by `make_train_step` and
compiled (by `setup.plan_step`, for the loop and the dry run alike) with explicit in/out shardings and the state
donated. The teacher (SWD) is an argument, not part of the state: it is never updated, never donated and never seen
by the optimizer.

The NaN guard is sticky so that the host need not look at every step: a step whose loss or gradient norm is not
finite leaves the state untouched, and so does every later step that is given the `healthy` flag it returned
(`metrics["applied"]`). The loop fetches the flags only at log intervals and before a save; whatever ran after the
bad step ran on the last good state and changed nothing, so that state is still the one to keep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2] raw key data; the data corruption itself is keyed by (seed, example index)


def init_state(params: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedules: dict[str, optax.Schedule],
    *,
    global_batch_size: int,
    trainable: Any = None,
) -> Callable[[TrainState, dict[str, jax.Array], Any], tuple[TrainState, dict[str, jax.Array]]]:
    """Build train_step(state, batch, teacher_params, healthy=None).

    `batch` leaves are [A, b, ...]: A micro-batches of b examples (A * b = global batch). `loss_fn(params, micro,
    teacher_params, global_num_samples)` must return a loss already divided by the global sample count, so the
    micro-batch losses and gradients simply add up (exact under accumulation and data parallelism).
    `trainable` (optimizer.trainable_mask; None: all) marks held leaves, whose gradient is stopped: zero, never
    computed, and out of the clipping norm.
    """

    def hold(params: Any) -> Any:
        if trainable is None:
            return params
        return jax.tree_util.tree_map(lambda x, t: x if t else jax.lax.stop_gradient(x), params, trainable)

    def train_step(state: TrainState, batch: dict[str, jax.Array], teacher_params: Any, healthy: Any = None):
        """`healthy`: bool scalar, False once an earlier step was not finite (None: True). metrics["finite"] says
        whether this step's loss and gradient norm are finite, metrics["applied"] whether its update was applied
        (finite and healthy): the `healthy` to pass to the next step."""
        grad_fn = jax.value_and_grad(
            lambda p, micro: loss_fn(hold(p), micro, teacher_params, global_batch_size), has_aux=True
        )

        def accumulate(carry, micro):
            grads_acc, loss_acc, metrics_acc = carry
            (loss, metrics), grads = grad_fn(state.params, micro)
            grads_acc = jax.tree_util.tree_map(lambda a, g: a + g.astype(a.dtype), grads_acc, grads)
            metrics_acc = jax.tree_util.tree_map(jnp.add, metrics_acc, metrics)
            return (grads_acc, loss_acc + loss, metrics_acc), None

        zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        first = jax.tree_util.tree_map(lambda x: x[0], batch)
        metric_shapes = jax.eval_shape(lambda: grad_fn(state.params, first)[0][1])
        metrics0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
        (grads, loss, metrics), _ = jax.lax.scan(accumulate, (zeros, jnp.zeros((), jnp.float32), metrics0), batch)

        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), params, state.params)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        applied = finite if healthy is None else finite & healthy
        # A non-finite step (or any step after one) leaves the state untouched: the host stops at its next check
        # and the last good checkpoint stays valid.
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(applied, n, o), new, old)
        new_state = TrainState(
            step=state.step + applied.astype(jnp.int32),
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            rng=state.rng,
        )
        out = dict(metrics)
        out.update(
            loss=loss,
            grad_norm=grad_norm,
            finite=finite,
            applied=applied,
            **{f"lr_{name}": s(state.step) for name, s in schedules.items()},
        )
        return new_state, out

    return train_step
