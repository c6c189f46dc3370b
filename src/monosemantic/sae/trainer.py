"""The one training loop every SAE variant shares.

It owns what the variants have in common: input normalisation, b_dec initialisation at the
geometric median (Bricken et al. 2023), Adam with LR warm-up/decay, the unit-norm decoder
constraint (gradient component parallel to each dictionary vector removed before the step, rows
renormalised after — Bricken et al. 2023; Gao et al. 2024 do the same) for the variants that keep
it, optional gradient-norm clipping, dead-feature tracking,
scheduled resampling, logging, checkpoint/resume and the progress bar. A variant contributes only
its loss (``SparseAutoencoder.training_output``).

Data parallelism (``world``, a torchrun world of N ranks): every rank trains on its own rows of each
global batch of the same shuffled stream (``World.local_part``), which it cuts from the global batch
or, with ``rank_rows``, reads alone (``shuffled_batches(…, part=(rank, N))``); the averaged
gradient of N equal parts is the whole batch's gradient, and everything else that depends on the
whole batch is reduced over the ranks too — which features fired (dead-feature counters, hence
AuxK's dead latents), AuxK's normaliser and BatchTopK's batch-wide selection and threshold (in the
variants, through ``SparseAutoencoder.batch_world``), the logged figures, and resampling's scores
and picked inputs. Parameters start from rank 0's, and every rank applies the same Adam step to the
same gradient, so the ranks stay identical and a world of N trains the SAE a world of 1 trains on
the same global batches (up to float rounding of the split sums). Gradients are reduced by one
explicit all-reduce rather than DistributedDataParallel: the step is ``training_output``, not
``forward`` (through which DDP arms its hooks), and the decoder-parallel projection and the clipping
need the whole gradient first; DDP's overlap of the reduction with backward buys little when the
backward is one sparse product. Rank 0 alone writes checkpoints; every rank can resume from one,
at any world size that divides the batch (the state holds nothing per rank).

Dictionary parallelism (``shard="latents"``, TopK only): every rank trains on the whole batch and
holds F/N latents (``sae/sharded.py``); nothing is averaged, since each rank's gradients are its own
latents' and b_dec's is whole everywhere. Checkpoints hold the whole dictionary (gathered to rank 0,
Adam's moments and the dead-latent counters too), so they resume sharded or not.

On CPU the loop runs inside ``retained_cpu_memory`` (``cpu_memory.py``): each step's large tensors
reuse the previous step's pages instead of faulting in fresh ones.

Inputs are multiplied by one constant so that E‖x‖² = d_in (Anthropic's April 2024 update;
Gemma Scope normalises likewise), so the defaults of λ, k and learning rates do not depend on the
scale of the activations. The returned SAE has that constant folded back in: it takes raw
activations.
"""

from __future__ import annotations

import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from pickle import UnpicklingError  # what torch.load(weights_only=True) raises on a foreign file
from typing import Callable, Iterable, Iterator, Literal

import torch

from monosemantic.atomic import atomic_path
from monosemantic.cpu_memory import retained_cpu_memory
from monosemantic.device import reproducible_kernels, resolve_device
from monosemantic.distributed import SINGLE, World
from monosemantic.errors import UserError
from monosemantic.progress import progress
from monosemantic.sae.base import SparseAutoencoder, check_activations
from monosemantic.sae.build import build_sae
from monosemantic.sae.config import SAEConfig
from monosemantic.sae.resampling import pick_inputs, reinitialise_features, resampling_weights
from monosemantic.sae.sharded import ShardedTopKSAE

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "monosemantic-sae-checkpoint/1"
LOG_POINTS = 100  # history entries per run


@dataclass
class TrainResult:
    """A trained SAE (raw activation units, eval mode) and how its training went."""

    sae: SparseAutoencoder
    train_seconds: float
    samples_seen: int
    input_scale: float  # the constant the inputs were multiplied by during training
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _State:
    """Everything besides weights and optimizer that a resumed run needs."""

    samples_seen: int
    steps: int
    samples_since_fired_F: torch.Tensor
    resamples_done: int
    train_seconds: float
    input_scale: float
    history: list[dict[str, float]]


@torch.no_grad()
def geometric_median(points_ND: torch.Tensor, n_iter: int = 100, tol: float = 1e-7) -> torch.Tensor:
    """The point minimising Σ_n ‖p_n − m‖ (Weiszfeld's algorithm), [N, D] → [D]."""
    median_D = points_ND.mean(dim=0)
    for _ in range(n_iter):
        weights_N = 1 / (points_ND - median_D).norm(dim=1).clamp_min(1e-8)
        new_D = (weights_N[:, None] * points_ND).sum(dim=0) / weights_N.sum()
        if (new_D - median_D).norm() <= tol * median_D.norm().clamp_min(1e-8):
            return new_D
        median_D = new_D
    return median_D


def input_scale_for(acts_ND: torch.Tensor) -> float:
    """The constant c with E‖c·x‖² = D over ``acts_ND`` [N, D]."""
    mean_sq = acts_ND.double().pow(2).sum(dim=1).mean().item()
    if mean_sq == 0:
        raise UserError("init activations are all zero: nothing for an SAE to learn")
    return math.sqrt(acts_ND.shape[1] / mean_sq)


def learning_rate(cfg: SAEConfig, frac: float) -> float:
    """Linear warm-up over ``warmup_frac``, constant, linear decay to 0 over ``decay_frac``."""
    lr = cfg.lr
    if cfg.warmup_frac > 0:
        lr *= min(1.0, frac / cfg.warmup_frac)
    if cfg.decay_frac > 0:
        lr *= min(1.0, max(0.0, 1 - frac) / cfg.decay_frac)
    return lr


@torch.no_grad()
def _project_out_parallel_grad(W_dec_FD: torch.nn.Parameter) -> None:
    """grad_f ← grad_f − (grad_f · w_f) w_f for every unit-norm row w_f, in two passes over [F, D]
    (a row-wise dot product, then one fused multiply-subtract): at small widths the step is bound by
    such passes over parameter-sized arrays, not by its matmul."""
    grad_FD = W_dec_FD.grad
    grad_FD.addcmul_(torch.linalg.vecdot(grad_FD, W_dec_FD, dim=1).unsqueeze(1), W_dec_FD, value=-1)


@torch.no_grad()
def _normalise_rows(W_dec_FD: torch.nn.Parameter) -> None:
    W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-8)


def train_sae(
    cfg: SAEConfig,
    batches: Iterable[torch.Tensor] | Callable[[int], Iterable[torch.Tensor]],
    init_acts_ND: torch.Tensor,
    checkpoint_dir: Path | None = None,
    world: World = SINGLE,
    shard: Literal["batch", "latents"] = "batch",
    rank_rows: bool = False,
) -> TrainResult:
    """Train ``cfg.variant`` on ``batches`` (float [B, D] activation batches, already shuffled)
    until ``cfg.n_samples`` activations have been seen.

    ``init_acts_ND`` [N, D] (a few thousand activations suffice) sets the input scale and b_dec.
    With ``checkpoint_dir``, the state is saved there every ``cfg.checkpoint_every`` samples and
    at the end, and a run finding a checkpoint continues from it. To resume, ``batches`` must be a
    function giving the deterministic stream from a batch index on (e.g. ``lambda start:
    store.shuffled_batches(…, start_batch=start)``): the resumed run asks for the stream from the
    first batch it has not trained on, so it is where the killed run was and nothing is read twice.
    Resampling scores fresh inputs taken from the stream; they are trained on afterwards, so no
    data is skipped (and the stream position is always the number of steps taken).

    With a ``world`` of N ranks each rank passes the same global batches and trains on its part of
    each (module docstring); batch sizes must be divisible by N. With ``rank_rows`` each rank passes
    only its part of each global batch instead (rows [r·B/N, (r+1)·B/N), B/N of them). With
    ``shard="latents"`` each rank passes the same whole batches and holds F/N of the latents.
    """
    device = resolve_device(cfg.device)
    check_activations(init_acts_ND, cfg.d_in, "init activations")
    if shard == "latents":
        if cfg.grad_clip is not None:
            raise UserError("sae.shard=latents: gradient clipping (sae.params.grad_clip) is not supported there")
        sae, batch_world = ShardedTopKSAE(cfg, world).to(device), SINGLE
    else:
        world.check_divides(cfg.batch_size, "sae.batch_size")
        sae, batch_world = build_sae(cfg).to(device), world
    if rank_rows and shard == "latents":
        raise ValueError("a dictionary-parallel SAE trains on whole batches, not on rank_rows")
    parts = _RankParts(batch_world, rank_rows)
    sae.batch_world = batch_world
    # fused: one kernel per tensor; on CPU several times faster than the per-op loop (benchmarks/sae_step_levers.py)
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, fused=device.type in ("cpu", "cuda"))
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    ckpt_path = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir is not None else None

    if ckpt_path is not None and ckpt_path.exists():
        state = _load_checkpoint(ckpt_path, cfg, sae, optimizer, generator, device)
    else:
        scale = input_scale_for(init_acts_ND)
        with torch.no_grad():
            sae.b_dec.copy_(geometric_median(init_acts_ND.to(device).float() * scale))
        state = _State(0, 0, torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device), 0, 0.0, scale, [])
    _start_from_rank_0(sae, state, world)

    dead_window = max(1, int(cfg.dead_window * cfg.n_samples))
    resample_points = [int(f * cfg.n_samples) for f in cfg.resample_at]
    log_every = max(1, math.ceil(cfg.n_samples / cfg.batch_size / LOG_POINTS))
    if not callable(batches) and 0 < state.samples_seen < cfg.n_samples:
        raise TypeError("resuming from a checkpoint needs batches as a function of the start batch")
    stream: Iterator[torch.Tensor] = iter(batches(state.steps) if callable(batches) else batches)
    sae.train()

    # on CPU, each step's large tensors reuse the last step's pages instead of faulting in fresh ones
    keep_memory = retained_cpu_memory() if device.type == "cpu" else nullcontext()
    with (
        keep_memory,
        reproducible_kernels(device),
        progress(f"SAE {cfg.variant} F={cfg.d_sae}", total=cfg.n_samples, unit="samples") as advance,
    ):
        advance(state.samples_seen)
        started = time.perf_counter()
        while state.samples_seen < cfg.n_samples:
            if (
                state.resamples_done < len(resample_points)
                and state.samples_seen >= resample_points[state.resamples_done]
            ):
                stream = _resample(sae, optimizer, state, stream, dead_window, generator, cfg, device, parts)
            x_BD = next(stream, None)
            if x_BD is None:
                raise UserError(
                    f"activation batches ran out after {state.samples_seen:,} of n_samples="
                    f"{cfg.n_samples:,} samples: lower n_samples or provide more activations"
                )
            check_activations(x_BD, cfg.d_in, f"activation batch {state.steps}")
            B = parts.global_rows(x_BD)  # the global batch; this rank trains on its part
            x_BD = parts.mine(x_BD).to(device, torch.float32, non_blocking=True) * state.input_scale

            frac = (state.samples_seen + B) / cfg.n_samples
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, frac)
            sparsity_scale = min(1.0, frac / cfg.sparsity_warmup) if cfg.sparsity_warmup > 0 else 1.0
            dead_F = state.samples_since_fired_F >= dead_window

            out = sae.training_output(x_BD, dead_F, sparsity_scale)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            _average_gradients(sae, batch_world)
            if sae.unit_norm_decoder:
                _project_out_parallel_grad(sae.W_dec)
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
            optimizer.step()
            if sae.unit_norm_decoder:
                _normalise_rows(sae.W_dec)

            state.samples_since_fired_F += B
            fired_F = batch_world.all_reduce_(out.fired_F.to(torch.uint8), "max").bool()
            state.samples_since_fired_F.masked_fill_(fired_F, 0)  # no host sync, unlike boolean indexing
            previous = state.samples_seen
            state.samples_seen += B
            state.steps += 1

            info = None
            if state.steps % log_every == 0 or state.samples_seen >= cfg.n_samples:
                names = ["loss", "l0", *out.terms]
                local_T = torch.stack([out.loss.detach(), out.l0, *out.terms.values()]).float()
                mean_T = batch_world.all_reduce_(local_T).div_(batch_world.size).tolist()  # mean of equal parts
                entry = {
                    "samples": state.samples_seen,
                    "lr": optimizer.param_groups[0]["lr"],
                    **dict(zip(names, mean_T)),
                    "dead_frac": _whole(sae, "latents", dead_F.float()).mean().item(),
                }
                state.history.append(entry)
                info = f"loss {entry['loss']:.4g}  L0 {entry['l0']:.1f}  dead {entry['dead_frac']:.1%}"
            advance(B, info=info)

            done = state.samples_seen >= cfg.n_samples
            if ckpt_path is not None and (
                done or state.samples_seen // cfg.checkpoint_every > previous // cfg.checkpoint_every
            ):
                state.train_seconds += time.perf_counter() - started
                started = time.perf_counter()
                payload = _checkpoint(cfg, sae, optimizer, generator, state)  # every rank: a sharded SAE gathers
                if world.is_main:
                    with atomic_path(ckpt_path) as tmp:
                        torch.save(payload, tmp)
        state.train_seconds += time.perf_counter() - started

    if isinstance(sae, ShardedTopKSAE):
        sae = sae.gathered()
    sae.eval()
    sae.batch_world = SINGLE  # the trained SAE is an ordinary one-process model
    sae.rescale_units(state.input_scale)
    return TrainResult(sae, state.train_seconds, state.samples_seen, state.input_scale, state.history)


def _resample(
    sae: SparseAutoencoder,
    optimizer: torch.optim.Adam,
    state: _State,
    stream: Iterator[torch.Tensor],
    dead_window: int,
    generator: torch.Generator,
    cfg: SAEConfig,
    device: torch.device,
    parts: _RankParts,
) -> Iterator[torch.Tensor]:
    """Resample dead features on inputs drawn from ``stream``; returns the stream with those
    batches put back in front.

    Each rank scores its part of each global batch; the scores are gathered in global-batch order
    (so the weights, and the generator's picks, are a world of 1's), and each picked input is
    contributed by the rank that holds it (a sum over ranks of rows that are zero elsewhere)."""
    world = parts.world
    taken: list[torch.Tensor] = []
    n = 0
    while n < cfg.resample_inputs and (x_BD := next(stream, None)) is not None:
        check_activations(x_BD, cfg.d_in, f"activation batch {state.steps + len(taken)}")
        taken.append(x_BD)
        n += parts.global_rows(x_BD)
    dead_F = state.samples_since_fired_F >= dead_window
    n_dead = int(dead_F.sum())
    if taken and n_dead:
        mine = [parts.mine(x_BD).to(device, torch.float32) * state.input_scale for x_BD in taken]
        weights_N = torch.cat([world.all_gather(resampling_weights(sae, part_ND)) for part_ND in mine])
        pick_K = pick_inputs(weights_N, n_dead, generator)
        batch_starts = torch.tensor([0] + [parts.global_rows(x_BD) for x_BD in taken]).cumsum(0)
        batch_K = torch.searchsorted(batch_starts, pick_K, right=True) - 1
        within_K = pick_K - batch_starts[batch_K]
        part_len_K = torch.tensor([len(part) for part in mine])[batch_K]
        part_starts = torch.tensor([0] + [len(part) for part in mine]).cumsum(0)
        mine_K = within_K // part_len_K == world.rank
        local_K = part_starts[batch_K] + within_K % part_len_K
        inputs_KD = torch.zeros(n_dead, cfg.d_in, device=device)
        inputs_KD[mine_K.to(device)] = torch.cat(mine)[local_K[mine_K].to(device)]
        reinitialise_features(sae, optimizer, dead_F, world.all_reduce_(inputs_KD))
    if taken:
        state.samples_since_fired_F[dead_F] = 0
        state.history.append({"samples": state.samples_seen, "resampled": n_dead})
    state.resamples_done += 1
    return itertools.chain(taken, stream)


@dataclass(frozen=True)
class _RankParts:
    """How this rank gets its part of each global batch: cut from the whole batch it is passed, or
    passed only its part (``rank_rows``)."""

    world: World
    rank_rows: bool

    def mine(self, x_BD: torch.Tensor) -> torch.Tensor:
        return x_BD if self.rank_rows else self.world.local_part(x_BD)

    def global_rows(self, x_BD: torch.Tensor) -> int:
        """The rows of the global batch that ``x_BD`` is (or is this rank's part of)."""
        return len(x_BD) * self.world.size if self.rank_rows else len(x_BD)


def _start_from_rank_0(sae: SparseAutoencoder, state: _State, world: World) -> None:
    """Every rank takes rank 0's replicated parameters and buffers (all of them, or a sharded SAE's
    b_dec) and input scale (the same numbers, bar any nondeterminism in computing them, so that the
    ranks cannot drift apart)."""
    replicated = [sae.b_dec] if isinstance(sae, ShardedTopKSAE) else itertools.chain(sae.parameters(), sae.buffers())
    with torch.no_grad():
        for tensor in replicated:
            contiguous = world.broadcast_(tensor.detach().contiguous())  # W_enc is a transposed view
            if contiguous.data_ptr() != tensor.data_ptr():
                tensor.copy_(contiguous)
    state.input_scale = world.broadcast_object(state.input_scale)


@torch.no_grad()
def _average_gradients(sae: SparseAutoencoder, world: World) -> None:
    """Each gradient ← its mean over the ranks (equal batch parts: the whole batch's gradient),
    in one all-reduce of the concatenated gradients."""
    if world.size == 1:
        return
    grads = [p.grad for p in sae.parameters() if p.grad is not None]
    flat = world.all_reduce_(torch.cat([g.flatten() for g in grads])).div_(world.size)
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(chunk.view_as(grad))


def _whole(sae: SparseAutoencoder, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of the whole dictionary: gathered from the ranks for a sharded SAE, else itself."""
    return sae.whole(name, tensor) if isinstance(sae, ShardedTopKSAE) else tensor


def _own(sae: SparseAutoencoder, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of the whole-dictionary ``tensor`` (itself unless ``sae`` is sharded)."""
    return sae.own(name, tensor) if isinstance(sae, ShardedTopKSAE) else tensor


def _checkpoint(
    cfg: SAEConfig,
    sae: SparseAutoencoder,
    optimizer: torch.optim.Adam,
    generator: torch.Generator,
    state: _State,
) -> dict:
    """What a checkpoint holds, for the whole dictionary however it is sharded."""
    names = [name for name, _ in sae.named_parameters()]
    optim = optimizer.state_dict()
    optim["state"] = {
        i: {k: _whole(sae, names[i], v) if k.startswith("exp_avg") else v for k, v in moments.items()}
        for i, moments in optim["state"].items()
    }
    return {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.model_dump(mode="json"),
        "sae": {name: _whole(sae, name, tensor) for name, tensor in sae.state_dict().items()},
        "optimizer": optim,
        "generator": generator.get_state(),
        "state": {**vars(state), "samples_since_fired_F": _whole(sae, "latents", state.samples_since_fired_F)},
    }


def _load_checkpoint(
    path: Path,
    cfg: SAEConfig,
    sae: SparseAutoencoder,
    optimizer: torch.optim.Adam,
    generator: torch.Generator,
    device: torch.device,
) -> _State:
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not an SAE training checkpoint")
        if set(payload["state"]) != {f.name for f in fields(_State)}:
            raise ValueError("its training state has other fields than this version's")
        # through today's SAEConfig: a field added since the checkpoint takes its default, which
        # (by the rule for new fields) trains as the code before it did
        saved_cfg = {k: v for k, v in type(cfg)(**payload["config"]).model_dump(mode="json").items() if k != "device"}
        ours = {k: v for k, v in cfg.model_dump(mode="json").items() if k != "device"}
        if saved_cfg != ours:
            changed = sorted(k for k in ours if saved_cfg.get(k) != ours[k])
            raise UserError(
                f"checkpoint {path}: made with a different SAE config (differs in {', '.join(changed)}); "
                "delete it to start over"
            )
        sae.load_state_dict({name: _own(sae, name, tensor) for name, tensor in payload["sae"].items()})
        names = [name for name, _ in sae.named_parameters()]
        for i, moments in payload["optimizer"]["state"].items():
            for k in [k for k in moments if k.startswith("exp_avg")]:
                moments[k] = _own(sae, names[i], moments[k]).clone()
        optimizer.load_state_dict(payload["optimizer"])
        generator.set_state(payload["generator"])
        state = _State(**payload["state"])
        state.samples_since_fired_F = _own(sae, "latents", state.samples_since_fired_F).clone()
    # what torch.load, the state-dict loaders and the checks above raise on a truncated or foreign file
    except (OSError, EOFError, UnpicklingError, RuntimeError, ValueError, KeyError) as err:
        raise UserError(
            f"checkpoint {path}: corrupt or not ours ({type(err).__name__}: {err}); delete it to start over"
        ) from None
    state.samples_since_fired_F = state.samples_since_fired_F.to(device)
    return state
