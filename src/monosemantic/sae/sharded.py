"""Dictionary-parallel TopK: the latents split across the ranks of a torchrun world.

For dictionaries too wide for one device (F = 131,072 and more), rank r of N holds latents
[r·F/N, (r+1)·F/N): its columns of ``W_enc``, its entries of ``b_enc``, its rows of ``W_dec``;
``b_dec`` is replicated. Every rank sees the whole batch. Per token, each rank ranks its own latents
and offers its k best; the ranks' offers are gathered and each rank keeps those of its own that
are among the k best overall — the unsharded top-k (AuxK's top-k_aux of the dead latents alike).
Each rank decodes its kept latents and the partial reconstructions are summed (an all-reduce), so
every rank holds x̂ and the same loss. Backward (Megatron-LM's pair of conjugate operators): the
sum's gradient is the identity to each rank's part, and b_dec, which every rank's encoder reads,
gets the sum over ranks of their encoder gradients; so every local parameter's gradient is the
unsharded one's slice, and b_dec's is whole on every rank. ``gathered`` puts the dictionary back
together for saving: the ordinary single-file SAELens layout; ``whole`` and ``own`` do the same for
any per-latent tensor (Adam's moments, dead-latent counters), so that a training checkpoint is the
unsharded one and resumes at any world size that divides F, world size 1 included.
"""

from __future__ import annotations

import torch

from monosemantic.distributed import World
from monosemantic.errors import UserError
from monosemantic.sae.base import StepOutput
from monosemantic.sae.config import SAEConfig
from monosemantic.sae.topk import TopKSAE

LATENT_DIM = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "latents": 0}  # split along the latents; others replicated


class _SumOverRanks(torch.autograd.Function):
    """Forward: the sum of every rank's tensor. Backward: the gradient as it is (the loss that
    follows is the same on every rank, so each part's gradient is the sum's)."""

    @staticmethod
    def forward(ctx, part, world: World):  # noqa: ANN001, ANN205 — autograd signature
        return world.all_reduce_(part.clone())

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad, None


class _ReadByEveryRank(torch.autograd.Function):
    """Forward: the tensor as it is. Backward: the sum over ranks of the gradients (each rank's
    part of the model read it)."""

    @staticmethod
    def forward(ctx, tensor, world: World):  # noqa: ANN001, ANN205
        ctx.world = world
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return ctx.world.all_reduce_(grad.clone()), None


class ShardedTopKSAE(TopKSAE):
    """This rank's F/N latents of a TopK SAE of ``cfg`` (``self.cfg`` is the shard's config,
    ``full_cfg`` the whole dictionary's), initialised with the unsharded SAE's rows."""

    def __init__(self, cfg: SAEConfig, world: World):
        if cfg.variant != "topk":
            raise UserError(f"sae.shard=latents: works for the topk variant, not {cfg.variant}")
        world.check_divides(cfg.d_sae, "sae.d_sae")
        local = cfg.d_sae // world.size
        if local < max(cfg.k, cfg.aux_k):
            raise UserError(
                f"sae.shard=latents: each of {world.size} ranks holds {local} latents, fewer than "
                f"k={cfg.k} or aux_k={cfg.aux_k}; use fewer ranks"
            )
        super().__init__(cfg.model_copy(update={"d_sae": local}))
        self.full_cfg, self.shard_world = cfg, world
        self.first = world.rank * local
        unsharded = TopKSAE(cfg)  # the same seed draws the same dictionary; keep this rank's rows
        with torch.no_grad():
            self.W_enc.copy_(unsharded.W_enc[:, self.first : self.first + local])
            self.W_dec.copy_(unsharded.W_dec[self.first : self.first + local])

    def encoder_b_dec(self) -> torch.Tensor:
        return _ReadByEveryRank.apply(self.b_dec, self.shard_world)

    def decode_sparse(
        self, idx: torch.Tensor, vals: torch.Tensor, offsets_B: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Σ over every rank's kept latents of vals_f W_dec[f]: this rank's part, summed over ranks."""
        return _SumOverRanks.apply(super().decode_sparse(idx, vals, offsets_B), self.shard_world)

    def _kept_overall(self, cand_BC: torch.Tensor, k: int) -> torch.Tensor:
        """Which of this rank's candidates [B, C] (C ≤ k) are among each token's k largest over
        the candidates of all ranks: bool [B, C]."""
        world = self.shard_world
        B, C = cand_BC.shape
        if C == 0:  # nothing to offer (no dead latent here); the gather must still take place
            world.all_gather(cand_BC.new_full((B, k), float("-inf")))
            return torch.zeros(B, 0, dtype=torch.bool, device=cand_BC.device)
        offered_BK = cand_BC.new_full((B, k), float("-inf"))
        offered_BK[:, :C] = cand_BC
        all_BR = world.all_gather(offered_BK).view(world.size, B, k).permute(1, 0, 2).reshape(B, world.size * k)
        top_BK = all_BR.topk(k, dim=1, sorted=False).indices - world.rank * k
        mine_BK = (top_BK >= 0) & (top_BK < C)
        hits_BC = torch.zeros(B, C, dtype=torch.long, device=cand_BC.device)
        return hits_BC.scatter_add_(1, top_BK.clamp(0, C - 1), mine_BK.long()) > 0

    @staticmethod
    def _flat(keep_BC: torch.Tensor, idx_BC: torch.Tensor, vals_BC: torch.Tensor):
        """The kept entries flat, ordered by token, with each token's offset [B]."""
        rows_N, cols_N = keep_BC.nonzero(as_tuple=True)
        counts_B = keep_BC.sum(dim=1)
        return idx_BC[rows_N, cols_N], vals_BC[rows_N, cols_N], torch.cumsum(counts_B, 0) - counts_B

    def select_active(self, pre_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vals_BK, idx_BK = pre_BF.topk(self.cfg.k, dim=1, sorted=False)
        return self._flat(self._kept_overall(vals_BK, self.cfg.k), idx_BK, vals_BK.relu())

    def any_dead(self, dead_F: torch.Tensor) -> bool:
        return bool(self.shard_world.all_reduce_(dead_F.any().to(torch.uint8), "max"))

    def select_dead(self, pre_BF: torch.Tensor, dead_F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dead_idx = dead_F.nonzero().squeeze(1)
        cand_BC, pos_BC = pre_BF[:, dead_idx].topk(min(self.cfg.aux_k, len(dead_idx)), dim=1, sorted=False)
        idx_N, _, offsets_B = self._flat(self._kept_overall(cand_BC, self.cfg.aux_k), dead_idx[pos_BC], cand_BC)
        return idx_N, offsets_B

    def training_output(self, x_BD: torch.Tensor, dead_F: torch.Tensor, sparsity_scale: float) -> StepOutput:
        """TopK's loss on the whole batch (``dead_F``: this rank's [F/N]); ``fired_F`` is this
        rank's, ``l0`` the whole dictionary's."""
        out = super().training_output(x_BD, dead_F, sparsity_scale)
        return out._replace(l0=self.shard_world.all_reduce_(out.l0.clone()))

    def whole(self, name: str, part: torch.Tensor) -> torch.Tensor:
        """The whole-dictionary tensor of which ``part`` is this rank's share (``name``: a parameter,
        or ``latents`` for any [F/N] vector); a replicated tensor as it is. Every rank calls it."""
        dim = LATENT_DIM.get(name)
        if dim is None:
            return part
        return self.shard_world.all_gather(part.movedim(dim, 0).contiguous()).movedim(0, dim)

    def own(self, name: str, whole: torch.Tensor) -> torch.Tensor:
        """This rank's share of the whole-dictionary tensor ``whole`` (the inverse of ``whole``)."""
        dim = LATENT_DIM.get(name)
        return whole if dim is None else whole.narrow(dim, self.first, self.cfg.d_sae)

    @torch.no_grad()
    def gathered(self) -> TopKSAE:
        """The whole dictionary as one ordinary TopK SAE (on every rank; one all-gather per tensor)."""
        whole = TopKSAE(self.full_cfg).to(self.b_dec.device)
        for name, part in self.named_parameters():
            getattr(whole, name).copy_(self.whole(name, part))
        return whole.train(self.training)
