"""Densification with binding (GaussianAvatars §3.2): 3DGS's clone, split, prune and opacity
reset, on local parameters, every child keeping its parent's triangle.

As the authors (``scene/gaussian_model.py``): the clone/split choice and the large-Gaussian
pruning compare world sizes (k·exp(s), with k of the step's frame) with the scene extent; a clone
copies the local parameters; a split draws two children around the parent in its local frame
with the parent's local rotation and a standard deviation of the parent's world size (their
``stds = get_scaling``, added to the local position), each with a local scale of exp(s) / 1.6;
pruning never takes the last Gaussians of a triangle (when it would empty one, none of that
triangle's go). The screen-space gradient statistics and the edits of parameters and Adam state
are gsplat's (``DefaultStrategy._update_state``, ``gsplat.strategy.ops``), as for the hair.
"""

from __future__ import annotations

import logging

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import _update_param_with_optimizer, duplicate, remove, reset_opa
from torch import Tensor

from mega.gaussianavatars.config import GaussianAvatarsConfig
from mega.gaussianavatars.model import BoundGaussians
from mega.hair.densify import DensifyState, optimizer_views, step_statistics
from mega.render.gaussians import quaternion_to_matrix

log = logging.getLogger(__name__)


class BindingDensifier:
    """Calls :meth:`after_backward` once a step; edits the Gaussians, their binding and Adam."""

    def __init__(self, config: GaussianAvatarsConfig, scene_extent_m: float, state: DensifyState, total_steps: int):
        steps = config.images_to_steps
        self.strategy = DefaultStrategy(grow_grad2d=config.densify_grad_threshold, absgrad=False)
        self.start, self.every = steps(config.densify_from_images), steps(config.densify_every_images)
        self.until, self.reset_every = steps(config.densify_until_images), steps(config.opacity_reset_every_images)
        self.config = config
        self.scene_extent_m = scene_extent_m
        self.state = state
        self.total_steps = total_steps

    def after_backward(self, step: int, gaussians: BoundGaussians, optimizer: torch.optim.Optimizer,
                       means2d: list[Tensor], radii: Tensor, width: int, height: int, size_m: Tensor) -> bool:
        """Accumulate the step's gradients; densify, prune and reset on the schedule. ``step``
        counts from 1; ``size_m`` [N] is each Gaussian's triangle size in the step's (first)
        frame. Returns whether the Gaussians (or the optimizer's state) changed."""
        if step >= self.until:
            return False
        state = step_statistics(self.strategy, gaussians.params, self.state, self.scene_extent_m, means2d, radii,
                                width, height)
        state.update(binding=gaussians.binding, size=size_m.detach())
        views = optimizer_views(optimizer)
        changed = False
        with torch.no_grad():
            if step > self.start and step % self.every == 0:
                before = gaussians.n
                n_clone, n_split = self._grow(gaussians, views, state)
                n_prune = self._prune(gaussians, views, state, step)
                state["grad2d"].zero_()
                state["count"].zero_()
                log.debug("step %d: %d cloned, %d split, %d pruned: %d → %d Gaussians", step, n_clone, n_split,
                          n_prune, before, gaussians.n)
                changed = True
            # The authors reset every interval and once at the first densification (a white
            # background); as for the hair, none within one interval of the end.
            if (step % self.reset_every == 0 or step == self.start) and step + self.reset_every <= self.total_steps:
                reset_opa(params=gaussians.params, optimizers=views, state=state, value=2.0 * self.config.prune_opacity)
                changed = True
        gaussians.binding = state["binding"]
        self.state.grad2d, self.state.count = state["grad2d"], state["count"]
        return changed

    def _world_size(self, gaussians: BoundGaussians, state: dict) -> Tensor:
        return state["size"] * torch.exp(gaussians.params["scales"]).max(dim=-1).values

    def _grow(self, gaussians: BoundGaussians, views: dict, state: dict) -> tuple[int, int]:
        grads = state["grad2d"] / state["count"].clamp_min(1)
        high = grads > self.config.densify_grad_threshold
        small = self._world_size(gaussians, state) <= self.config.percent_dense * self.scene_extent_m
        is_clone, is_split = high & small, high & ~small
        n_clone, n_split = int(is_clone.sum()), int(is_split.sum())
        if n_clone:
            duplicate(params=gaussians.params, optimizers=views, state=state, mask=is_clone)
        is_split = torch.cat([is_split, is_split.new_zeros(n_clone)])
        if n_split:
            self._split(gaussians, views, state, is_split)
        return n_clone, n_split

    def _split(self, gaussians: BoundGaussians, views: dict, state: dict, mask: Tensor) -> None:
        """Two children per selected Gaussian in place of it, as the authors draw them."""
        p = gaussians.params
        sel, rest = torch.where(mask)[0], torch.where(~mask)[0]
        local_scales = torch.exp(p["scales"][sel])  # [S, 3]
        world_std = local_scales * state["size"][sel, None]  # the authors' stds (metres)
        rotation = quaternion_to_matrix(p["quats"][sel])  # the local rotation alone
        noise = torch.randn(2, len(sel), 3, device=sel.device, dtype=world_std.dtype)
        offsets = torch.einsum("nij,bnj->bni", rotation, world_std * noise)  # [2, S, 3]

        def param_fn(name: str, value: Tensor) -> Tensor:
            repeats = [2] + [1] * (value.dim() - 1)
            if name == "means":
                children = (value[sel] + offsets).reshape(-1, 3)
            elif name == "scales":
                children = torch.log(local_scales / 1.6).repeat(2, 1)
            else:
                children = value[sel].repeat(repeats)
            return torch.nn.Parameter(torch.cat([value[rest], children]), requires_grad=value.requires_grad)

        def optimizer_fn(key: str, value: Tensor) -> Tensor:
            return torch.cat([value[rest], value.new_zeros((2 * len(sel), *value.shape[1:]))])

        _update_param_with_optimizer(param_fn, optimizer_fn, p, views)
        for key, value in state.items():
            if isinstance(value, Tensor) and value.dim() > 0:
                state[key] = torch.cat([value[rest], value[sel].repeat([2] + [1] * (value.dim() - 1))])

    def _prune(self, gaussians: BoundGaussians, views: dict, state: dict, step: int) -> int:
        p = gaussians.params
        is_prune = torch.sigmoid(p["opacities"]) < self.config.prune_opacity
        if step > self.reset_every:
            is_prune |= self._world_size(gaussians, state) > self.config.prune_scale * self.scene_extent_m
        binding = state["binding"]
        # A triangle whose every Gaussian would go keeps them all (the authors' binding_counter).
        kept = torch.bincount(binding[~is_prune], minlength=gaussians.n_faces)
        is_prune &= kept[binding] > 0
        n_prune = int(is_prune.sum())
        if n_prune:
            remove(params=p, optimizers=views, state=state, mask=is_prune)
        return n_prune
