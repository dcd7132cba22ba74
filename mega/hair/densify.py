"""Densification of the canonical hair: clone, split, prune and opacity reset as 3D Gaussian
Splatting does, with gsplat's maintained implementation (``gsplat.strategy.DefaultStrategy``,
plain torch) driven by our renderer's screen-space gradients and radii.

Units: our ``means2d`` gradients are per pixel; 3DGS's 2e-4 threshold is for gradients in
normalised device coordinates. gsplat converts (× width/2, height/2) before comparing, and
multiplies by the number of images in the step, because a loss averaged over B images gives each
image 1/B of the gradient — so the threshold keeps its 3DGS meaning for our batches.

The schedule counts steps; the authors count training images (interval 200, reset 3000, from
500), so :class:`Densifier` converts with the batch size. gsplat 1.5.3's own opacity reset never
fires (an operator-precedence slip), so the reset is called here on the schedule, except within
one interval of the end (the authors instead keep the checkpoint from just before the last reset). The
screen-size pruning of 3DGS is off, as in gsplat and (through a bug) in 3DGS itself. 3DGS and gsplat
start pruning Gaussians larger than ``prune_scale`` × the extent after the first reset interval;
``prune_large_from_images`` can start it apart from the reset (0 keeps theirs).

The loop's single Adam optimizer holds one group per parameter name; gsplat edits per-name
optimizers, so each group is handed over as a one-group view of the same optimizer state.
"""

from __future__ import annotations

import logging

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import remove, reset_opa
from torch import Tensor

from mega.hair.config import HairConfig
from mega.hair.model import PARAMETER_NAMES, GaussianHair, ResizableState

log = logging.getLogger(__name__)


class DensifyState(ResizableState):
    """Per-Gaussian running sums between two densifications (checkpointed with the hair so a
    resumed run densifies exactly as the uninterrupted one): grad2d [N] accumulated NDC gradient
    norms, count [N] how many images saw each Gaussian."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("grad2d", torch.zeros(n))
        self.register_buffer("count", torch.zeros(n))


class _GroupView:
    """One parameter group of an optimizer, looking like an optimizer of its own to gsplat."""

    def __init__(self, optimizer: torch.optim.Optimizer, group: dict):
        self.param_groups = [group]
        self.state = optimizer.state


def optimizer_views(optimizer: torch.optim.Optimizer) -> dict[str, _GroupView]:
    return {g["name"]: _GroupView(optimizer, g) for g in optimizer.param_groups if g.get("name") in PARAMETER_NAMES}


def step_statistics(strategy: DefaultStrategy, params, running: DensifyState, scene_extent_m: float,
                    means2d: list[Tensor], radii: Tensor, width: int, height: int) -> dict:
    """Add one step's screen-space gradients to the running sums (gsplat's ``_update_state``)
    and return the state dict gsplat's operations edit: ``means2d`` the B images' [N, 2] tensors
    whose ``.grad`` is the gradient in pixels, ``radii`` [B, N] pixels."""
    grads = torch.stack([m.grad if m.grad is not None else torch.zeros_like(m) for m in means2d])
    carrier = torch.zeros_like(grads)
    carrier.grad = grads
    info = {"width": width, "height": height, "n_cameras": len(means2d), "gaussian_ids": None,
            "radii": radii[..., None].expand(-1, -1, 2), "means2d": carrier}
    state = {"grad2d": running.grad2d, "count": running.count, "scene_scale": scene_extent_m, "radii": None}
    with torch.no_grad():
        strategy._update_state(params, state, info)
    return state


class Densifier:
    """Calls :meth:`after_backward` once a step; edits the hair's parameters and the optimizer."""

    def __init__(self, config: HairConfig, batch_size: int, scene_extent_m: float, state: DensifyState,
                 total_steps: int):
        to_steps = lambda images: config.images_to_steps(images, batch_size)  # noqa: E731
        self.strategy = DefaultStrategy(
            prune_opa=config.prune_opacity, grow_grad2d=config.densify_grad_threshold,
            grow_scale3d=config.percent_dense, prune_scale3d=config.prune_scale,
            refine_start_iter=to_steps(config.densify_from_images),
            refine_stop_iter=to_steps(config.densify_until_images),
            refine_every=to_steps(config.densify_every_images),
            reset_every=to_steps(config.opacity_reset_every_images))
        self.prune_large_after_step = (to_steps(config.prune_large_from_images) if config.prune_large_from_images
                                       else self.strategy.reset_every)
        self.scene_extent_m = scene_extent_m
        self.state = state
        self.total_steps = total_steps

    def after_backward(self, step: int, hair: GaussianHair, optimizer: torch.optim.Optimizer,
                       means2d: list[Tensor], radii: Tensor, width: int, height: int) -> bool:
        """Accumulate this step's gradients and densify/prune/reset when the schedule says so.
        ``step`` counts from 1. Returns whether the set of Gaussians (or the optimizer) changed."""
        s = self.strategy
        if step >= s.refine_stop_iter:
            return False
        state = step_statistics(s, hair.params, self.state, self.scene_extent_m, means2d, radii, width, height)
        views = optimizer_views(optimizer)
        changed = False
        with torch.no_grad():
            if step > s.refine_start_iter and step % s.refine_every == 0 and step % s.reset_every >= s.pause_refine_after_reset:
                before = hair.n
                n_clone, n_split = s._grow_gs(hair.params, views, state, step)
                n_prune = self._prune(hair, views, state, step)
                state["grad2d"].zero_()
                state["count"].zero_()
                log.debug("step %d: %d cloned, %d split, %d pruned: %d → %d Gaussians", step, n_clone, n_split,
                          n_prune, before, hair.n)
                changed = True
            # The authors keep the checkpoint taken just before each reset and hand the last one to
            # the joint stage; here no reset comes later than one interval before the end, so the
            # opacities have as long to recover as between any two resets.
            if step % s.reset_every == 0 and step + s.reset_every <= self.total_steps:
                reset_opa(params=hair.params, optimizers=views, state=state, value=s.prune_opa * 2.0)
                changed = True
        self.state.grad2d, self.state.count = state["grad2d"], state["count"]
        return changed

    def _prune(self, hair: GaussianHair, views: dict, state: dict, step: int) -> int:
        """gsplat's ``_prune_gs`` with the start of the large-Gaussian pruning as a setting of its
        own: transparent Gaussians always, those larger than ``prune_scale`` × the extent (largest
        standard deviation, metres) after ``prune_large_after_step``. Returns how many went."""
        s = self.strategy
        is_prune = torch.sigmoid(hair.params["opacities"].flatten()) < s.prune_opa
        if step > self.prune_large_after_step:
            is_prune |= torch.exp(hair.params["scales"]).max(dim=-1).values > s.prune_scale3d * self.scene_extent_m
        n_prune = int(is_prune.sum())
        if n_prune:
            remove(params=hair.params, optimizers=views, state=state, mask=is_prune)
        return n_prune
