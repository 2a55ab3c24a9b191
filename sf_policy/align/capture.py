"""Capture the visual tokens of chosen VLM layers with forward hooks.

π0's training forward does not return the VLM's hidden states (it only keeps the KV cache
for the action expert), and asking for all of them would keep 19 copies of the prefix.
A hook on the one decoder layer we align copies out just its visual tokens.

Index convention (the same as transformers' `output_hidden_states=True`):
    hidden_states[0] = the embeddings entering decoder layer 0 → captured by a forward
                       PRE-hook on layers[0] (its input);
    hidden_states[k] = output of decoder layer k-1, 1 <= k < L → forward hook on layers[k-1];
    hidden_states[L] = final_norm(output of layer L-1): HF applies the model's last norm
                       to the last entry, so k = L hooks `final_norm` when one is given
                       (without it, k = L would be the un-normed output; refused).
π0's real-robot SF recipe aligns k = 12 of L = 18 → the output of `layers[11]`.

Gradient checkpointing: transformers ≥ 5 checkpoints a decoder layer's `forward`, not its
`__call__`, so module hooks run once, outside the checkpoint, on the real output (which
carries the autograd graph). A module wrapped differently (torch.utils.checkpoint around
`module(...)`) runs its hooks again when backward recomputes it. The capture therefore keeps
the FIRST call of each index and ignores repeats until `clear()` — the recomputation never
overwrites what the loss was built from. Give a `root` module (the language model) and the
capture clears itself at the start of each of its forward calls, so a training step that
forgets `clear()` cannot read last step's tokens. With *reentrant* checkpointing around the
hooked module, the first call runs under no_grad and the captured tokens have no graph: the
alignment loss would not train the VLM. That case gets a warning (once) instead of silently
training only the projector.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

from sf_policy.align.grid import NUM_VISUAL_TOKENS


def _hidden(output: object) -> torch.Tensor:
    """A decoder layer returns a tensor (transformers 5) or a tuple whose [0] is the hidden states."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find hidden states in a layer output of type {type(output).__name__}")


class LayerCapture:
    """Forward hooks that store the first `n_visual` tokens of hidden_states[k] for each k in `layers`.

    Use as an object (`cap = LayerCapture(...)`, `cap.remove()`) or a context manager. After
    a forward pass, `cap.outputs[k]` is [B, n_visual, D] (a copy of just those tokens, still
    in the autograd graph). `pop()` returns the outputs and clears them for the next step.
    """

    def __init__(
        self,
        vlm_layers: nn.ModuleList,
        layers: Iterable[int],
        n_visual: int = NUM_VISUAL_TOKENS,
        final_norm: nn.Module | None = None,
        root: nn.Module | None = None,
    ) -> None:
        self.layers = sorted(set(int(k) for k in layers))
        self.n_visual = n_visual
        self.outputs: dict[int, torch.Tensor] = {}
        self.calls: dict[int, int] = {k: 0 for k in self.layers}  # hook invocations since clear()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._warned = False
        n = len(vlm_layers)
        for k in self.layers:
            if k < 0 or k > n:
                raise ValueError(f"hidden_states index {k} out of range 0..{n}")
            if k == 0:
                self._handles.append(vlm_layers[0].register_forward_pre_hook(self._pre_hook(k), with_kwargs=True))
            elif k < n:
                self._handles.append(vlm_layers[k - 1].register_forward_hook(self._hook(k, vlm_layers[k - 1])))
            elif final_norm is not None:
                self._handles.append(final_norm.register_forward_hook(self._hook(k, vlm_layers[k - 1])))
            else:
                raise ValueError(f"hidden_states[{k}] is the final norm's output; pass final_norm= to capture it")
        if root is not None:
            self._handles.append(root.register_forward_pre_hook(lambda module, args: self.clear()))

    # -- hooks -------------------------------------------------------------------------

    def _record(self, k: int, hidden: torch.Tensor, layer: nn.Module) -> None:
        self.calls[k] += 1
        if k in self.outputs:
            return  # a recomputation under gradient checkpointing (or a second forward): keep the first
        no_graph = layer.training and not torch.is_grad_enabled() and not hidden.requires_grad
        if no_graph and not self._warned and any(p.requires_grad for p in layer.parameters()):
            self._warned = True
            # Training mode, trainable weights, yet no grad: most likely the forward half of a
            # reentrant checkpoint around this module. The tokens would carry no graph.
            warnings.warn(
                f"LayerCapture: hidden_states[{k}] was captured without autograd while its layer is training "
                "(reentrant gradient checkpointing around the hooked module?); the alignment loss will not "
                "reach the VLM. Use non-reentrant checkpointing (use_reentrant=False, transformers' default) "
                "or call model.eval() for evaluation.",
                stacklevel=2,
            )
        self.outputs[k] = hidden[:, : self.n_visual].clone()

    def _hook(self, k: int, layer: nn.Module):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            self._record(k, _hidden(output), layer)

        return hook

    def _pre_hook(self, k: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self._record(k, hidden, module)

        return hook

    # -- bookkeeping -------------------------------------------------------------------

    def clear(self) -> None:
        """Forget the stored tokens; call once per step (automatic with `root`)."""
        self.outputs = {}
        self.calls = {k: 0 for k in self.layers}

    def pop(self) -> dict[int, torch.Tensor]:
        """The stored tokens of this step; the capture is empty afterwards."""
        outputs = self.outputs
        self.clear()
        return outputs

    def remove(self) -> None:
        """Unregister every hook (the model is as before) and drop stored tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def __enter__(self) -> LayerCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

