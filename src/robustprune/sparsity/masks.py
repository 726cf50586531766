"""Binary weight masks and how they are enforced during training.

A pruned weight must stay *exactly* zero through any later training, including optimiser momentum
and weight decay. Two mechanisms do that together:

* :meth:`MaskSet.attach` registers a tensor hook on each masked ``weight`` that zeroes the
  gradient of pruned entries, so the loss never pushes them;
* :meth:`MaskSet.apply` (called by the trainer after every optimiser step) writes exact zeros into
  pruned entries again, which undoes what momentum buffers and decoupled/coupled weight decay of any
  optimiser may have moved.

``apply`` uses ``masked_fill_`` rather than ``weight *= mask`` so a pruned entry is ``+0.0`` even
if it had become ``inf``/``nan``.

A unit (conv filter / linear neuron) whose every weight is pruned is removed *entirely*: both mechanisms
also hold its bias and the affine weight and bias of the BatchNorm right after its layer at zero
(:func:`robustprune.sparsity.units.unit_param_masks`), so its output is exactly 0, as in the slim model.
These derived masks are recomputed from the weight masks on every ``apply``; they are not stored.
``MaskSet(masks, units=False)`` masks the weights only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from robustprune.errors import ConfigError


class MaskSet:
    """Bool masks keyed by module name (``True`` = weight kept), shaped like ``module.weight``."""

    def __init__(self, masks: Mapping[str, Tensor] | None = None, *, units: bool = True) -> None:
        self.masks: dict[str, Tensor] = {}
        for name, m in (masks or {}).items():
            self.masks[name] = _as_bool(m, name)
        self.units = bool(units)
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._unit_masks: dict[str, Tensor] = {}
        self._unit_handles: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._attached_to: int | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def ones(cls, model: nn.Module, group: str = "unstructured") -> MaskSet:
        """All-``True`` masks for the layers :func:`prunable_layers` returns for ``group``."""
        from robustprune.sparsity.groups import prunable_layers

        return cls(
            {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in prunable_layers(model, group).items()}
        )

    @classmethod
    def from_model(cls, model: nn.Module, group: str = "unstructured") -> MaskSet:
        """Masks of the non-zero weights currently present in the prunable layers."""
        from robustprune.sparsity.groups import prunable_layers

        return cls({n: m.weight.detach() != 0 for n, m in prunable_layers(model, group).items()})

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> MaskSet:
        """Inverse of :meth:`state_dict` (non-bool tensors are read as ``!= 0``)."""
        return cls({str(k): v for k, v in state.items()})

    def state_dict(self) -> dict[str, Tensor]:
        """``{module name: bool tensor}`` (contiguous copies, safe to save with safetensors)."""
        return {n: m.detach().clone().contiguous() for n, m in self.masks.items()}

    # ------------------------------------------------------------------ combining
    def combine(self, other: MaskSet | Mapping[str, Tensor] | None) -> MaskSet:
        """Logical AND with ``other`` (a new MaskSet); a layer masked in only one of them keeps
        that mask."""
        if other is None:
            return MaskSet(self.masks, units=self.units)
        other_masks = other.masks if isinstance(other, MaskSet) else dict(other)
        out = dict(self.masks)
        for name, m in other_masks.items():
            m = _as_bool(m, name)
            if name in out:
                if out[name].shape != m.shape:
                    raise ConfigError(
                        f"cannot combine masks for {name!r}: shapes {tuple(out[name].shape)} and "
                        f"{tuple(m.shape)} differ; were they computed on different models?"
                    )
                out[name] = out[name] & m.to(out[name].device)
            else:
                out[name] = m
        return MaskSet(out, units=self.units)

    __and__ = combine

    # ------------------------------------------------------------------ enforcement
    def _modules(self, model: nn.Module) -> dict[str, nn.Module]:
        mods = dict(model.named_modules())
        missing = [n for n in self.masks if n not in mods]
        if missing:
            raise ConfigError(
                f"masks name modules the model does not have: {', '.join(missing[:5])}; "
                "use masks computed for this architecture"
            )
        for name, m in self.masks.items():
            w = getattr(mods[name], "weight", None)
            if not isinstance(w, Tensor) or w.shape != m.shape:
                raise ConfigError(
                    f"mask for {name!r} has shape {tuple(m.shape)} but the module weight has "
                    f"{None if w is None else tuple(w.shape)}; use masks computed for this model"
                )
        return mods

    def unit_masks(self, model: nn.Module) -> dict[str, Tensor]:
        """``{parameter name: bool mask}`` for the biases and BatchNorm affine terms of the fully pruned units
        (empty with ``units=False``); see :mod:`robustprune.sparsity.units`."""
        if not self.units:
            return {}
        from robustprune.sparsity.units import unit_param_masks

        return unit_param_masks(model, self.masks)

    def apply(self, model: nn.Module) -> None:
        """Set pruned weights -- and the bias and BatchNorm affine terms of fully pruned units -- to exactly
        zero, in place, without autograd."""
        mods = self._modules(model)
        with torch.no_grad():
            for name, m in self.masks.items():
                w = mods[name].weight
                w.masked_fill_(~m.to(w.device), 0)
            self._unit_masks = self.unit_masks(model)
            if self._unit_masks:
                params = dict(model.named_parameters())
                for pname, m in self._unit_masks.items():
                    p = params.get(pname)
                    if p is not None:
                        p.masked_fill_(~m.to(p.device), 0)
        if self._handles and self._attached_to == id(model):
            self._hook_unit_params(model)

    def attach(self, model: nn.Module) -> None:
        """Register gradient hooks that zero the gradient of pruned weights.

        Idempotent: a second call (on the same or another model) first removes the hooks this
        MaskSet registered before, so each weight carries at most one hook from it. Hooks read
        ``self.masks`` when they fire, so later edits of the masks take effect without re-attaching.
        """
        mods = self._modules(model)
        self.detach()
        for name in self.masks:
            w = mods[name].weight
            self._handles[name] = w.register_hook(self._make_hook(name))
        self._attached_to = id(model)
        self._unit_masks = self.unit_masks(model)
        self._hook_unit_params(model)

    def _hook_unit_params(self, model: nn.Module) -> None:
        """Gradient hooks on the bias / BatchNorm parameters of fully pruned units not hooked yet."""
        if not self._unit_masks:
            return
        params = dict(model.named_parameters())
        for pname in self._unit_masks:
            p = params.get(pname)
            if pname not in self._unit_handles and p is not None and p.requires_grad:
                self._unit_handles[pname] = p.register_hook(self._make_unit_hook(pname))

    def _make_hook(self, name: str):
        def hook(grad: Tensor) -> Tensor | None:
            m = self.masks.get(name)
            if m is None:
                return None
            return grad.masked_fill(~m.to(grad.device), 0)

        return hook

    def _make_unit_hook(self, pname: str):
        def hook(grad: Tensor) -> Tensor | None:
            m = self._unit_masks.get(pname)
            if m is None:
                return None
            return grad.masked_fill(~m.to(grad.device), 0)

        return hook

    def detach(self) -> None:
        """Remove the gradient hooks registered by :meth:`attach` (no-op if none)."""
        for h in [*self._handles.values(), *self._unit_handles.values()]:
            h.remove()
        self._handles.clear()
        self._unit_handles.clear()
        self._attached_to = None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    # hooks belong to one live model: copies and pickles carry the masks only (re-attach them)
    def __getstate__(self) -> dict:
        return {"masks": self.masks, "units": self.units}

    def __setstate__(self, state: dict) -> None:
        self.masks = dict(state["masks"])
        self.units = bool(state.get("units", True))
        self._handles = {}
        self._unit_handles = {}
        self._unit_masks = {}
        self._attached_to = None

    # ------------------------------------------------------------------ queries
    def to(self, device: torch.device | str) -> MaskSet:
        """Move the masks to ``device`` in place (like ``nn.Module.to``) and return ``self``."""
        for name in self.masks:
            self.masks[name] = self.masks[name].to(device)
        return self

    def kept(self) -> int:
        """Number of kept (``True``) entries over all masks."""
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def numel(self) -> int:
        """Number of masked weights (kept + pruned)."""
        return int(sum(m.numel() for m in self.masks.values()))

    def keep_fraction(self) -> float:
        """Fraction of masked weights kept (1.0 for an empty MaskSet)."""
        n = self.numel()
        return self.kept() / n if n else 1.0

    def layer_keep_fractions(self) -> dict[str, float]:
        """Per-layer fraction kept."""
        return {n: float(m.float().mean()) if m.numel() else 1.0 for n, m in self.masks.items()}

    def names(self) -> list[str]:
        return list(self.masks)

    def __getitem__(self, name: str) -> Tensor:
        return self.masks[name]

    def __contains__(self, name: object) -> bool:
        return name in self.masks

    def __iter__(self) -> Iterator[str]:
        return iter(self.masks)

    def __len__(self) -> int:
        return len(self.masks)

    def __repr__(self) -> str:
        return f"MaskSet({len(self.masks)} layers, keep={self.keep_fraction():.4f})"


def _as_bool(m: Tensor, name: str) -> Tensor:
    if not isinstance(m, Tensor):
        raise ConfigError(f"mask for {name!r} must be a tensor, got {type(m).__name__}")
    return m.detach() if m.dtype == torch.bool else (m.detach() != 0)
