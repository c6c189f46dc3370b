"""A batch's gradient as a fixed binary tree of its parts' gradients: the same bits on any world size.

The global batch of B windows is cut into P equal parts (part p: rows [p·B/P, (p+1)·B/P), in the
order ``World.local_part`` cuts it); part p's loss L_p is the mean over its tokens and g_p = ∇L_p is
backpropagated on its own, so every part has the same shapes however many processes share the batch.
The batch's gradient is

    g = T(0, P) / P,   T(lo, hi) = g_lo if hi = lo + 1, else T(lo, m) + T(m, hi) with m = lo + (hi − lo) // 2,

the parts summed in one balanced binary tree, always this one. Floating-point addition is
commutative but not associative, so a sum's bits depend on its tree; fixing the tree fixes the bits.

A world of N ranks: rank r holds parts [r·P/N, (r+1)·P/N). When those ranges are nodes of the tree
(N a power of 2 dividing P, or N = P), rank r computes the subtree S_r = T(r·P/N, (r+1)·P/N) and
the tree over the ranks' sums, S_0..S_{N−1} split the same way, is T(0, P): every rank ends with the
one-process gradient bit for bit. Any other N gives the same sum in another order (equal within
float rounding, not bit-equal).

On one rank the parts are summed with a stack in the tree's post-order (at most log2 P + 1 pending
gradients). Under ``DistributedDataParallel`` every part but the rank's last is backpropagated under
``no_sync``; the last one's backward hands DDP its gradient alone, and ``PartGradients.ddp_hook``,
registered with ``register_comm_hook`` in place of DDP's averaging all-reduce, adds it into the
pending sums (which leaves S_r), all-gathers the N sums and tree-sums them in rank order, then
divides by P.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from monosemantic.distributed import World

_MERGE = -1  # in a post-order: add the two sums on top of the stack


def tree_sum(values: list[torch.Tensor]) -> torch.Tensor:
    """T over ``values`` in order: the first half's tree plus the second half's (halves split at len // 2)."""
    if len(values) == 1:
        return values[0]
    m = len(values) // 2
    return tree_sum(values[:m]) + tree_sum(values[m:])


def _post_order(lo: int, hi: int) -> list[int]:
    """T(lo, hi) as stack operations: a part index pushes its gradient, ``_MERGE`` adds the top two."""
    if hi - lo == 1:
        return [lo]
    m = lo + (hi - lo) // 2
    return _post_order(lo, m) + _post_order(m, hi) + [_MERGE]


class PartGradients:
    """This rank's share of the P parts of each batch and the pending sums of their gradients.

    Per step: ``split`` the global batch; after each part's backward but the rank's last, ``take`` its
    gradients; after the last, ``finish`` (a world of one) or let DDP call ``ddp_hook``. Either way
    every parameter's ``.grad`` ends as the batch's gradient g = T(0, P) / P."""

    def __init__(self, params: list[torch.nn.Parameter], n_parts: int, world: World):
        world.check_divides(n_parts, "lm.grad_parts")
        self.params, self.n_parts, self.world = params, n_parts, world
        self.mine = n_parts // world.size  # parts per rank
        self.first = world.rank * self.mine
        self._ops = _post_order(self.first, self.first + self.mine)
        self._stack: list[dict[torch.nn.Parameter, torch.Tensor]] = []
        self._next = 0  # position in _ops

    def split(self, windows_BT: torch.Tensor) -> list[torch.Tensor]:
        """This rank's parts of the global batch ``windows_BT``, in order; starts a new step (no ``.grad``)."""
        rows = windows_BT.shape[0] // self.n_parts
        self._stack, self._next = [], 0
        for param in self.params:
            param.grad = None
        return [windows_BT[p * rows : (p + 1) * rows] for p in range(self.first, self.first + self.mine)]

    def take(self) -> None:
        """Move the parameters' ``.grad`` (one part's gradient alone) onto the stack; add what the tree adds next."""
        self._stack.append({param: param.grad for param in self.params})
        for param in self.params:
            param.grad = None
        self._next += 1
        while self._next < len(self._ops) and self._ops[self._next] == _MERGE:
            right, left = self._stack.pop(), self._stack.pop()
            self._stack.append({param: left[param] + right[param] for param in self.params})
            self._next += 1

    def _subtree(self, param: torch.nn.Parameter, last_part: torch.Tensor) -> torch.Tensor:
        """S_r for ``param``, given its last part's gradient: the pending sums added in from the right."""
        total = last_part
        for pending in reversed(self._stack):
            total = pending[param] + total
        return total

    def finish(self) -> None:
        """A world of one, after the last part's backward: every ``.grad`` becomes T(0, P) / P."""
        for param in self.params:
            param.grad = self._subtree(param, param.grad) / self.n_parts

    def ddp_hook(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        """DDP's communication hook: the bucket holds the rank's last part's gradients; returns a future
        of the bucket's g = T(S_0, …, S_{N−1}) / P, which DDP copies into the parameters' ``.grad``."""
        if self._stack:
            for param, grad in zip(bucket.parameters(), bucket.gradients()):  # views into bucket.buffer()
                grad.copy_(self._subtree(param, grad))
        local = bucket.buffer()
        gathered = [torch.empty_like(local) for _ in range(self.world.size)]
        work = dist.all_gather(gathered, local, async_op=True)
        return work.get_future().then(lambda _: tree_sum(gathered) / self.n_parts)
