"""Contrastive Representation Distillation (Tian et al., "Contrastive Representation
Distillation", ICLR 2020): embeddings, the two momentum memory banks and the NCE loss."""

import math
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn


class Embed(nn.Module):
    """Linear projection of the flattened input to `dim_out`, then L2 normalisation per sample."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.reshape(x.shape[0], -1))
        return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


class AliasSampler(nn.Module):
    """Walker's alias method: O(1) draws from a fixed discrete distribution over `len(probs)` items.

    The tables are non-persistent buffers: they follow `.to(device)` and stay out of state dicts.
    """

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        size = probs.numel()
        scaled = (probs.double() / probs.sum() * size).tolist()
        prob, alias = [1.0] * size, [0] * size
        small = [i for i, p in enumerate(scaled) if p < 1.0]
        large = [i for i, p in enumerate(scaled) if p >= 1.0]
        while small and large:
            s, l = small.pop(), large.pop()
            prob[s], alias[s] = scaled[s], l
            scaled[l] += scaled[s] - 1.0
            (small if scaled[l] < 1.0 else large).append(l)
        self.register_buffer("prob", torch.tensor(prob, dtype=torch.float32), persistent=False)
        self.register_buffer("alias", torch.tensor(alias, dtype=torch.long), persistent=False)

    def draw(self, n: int) -> torch.Tensor:
        """`n` indices drawn independently, on the device of the tables."""
        column = torch.randint(0, self.prob.numel(), (n,), device=self.prob.device)
        keep = torch.bernoulli(self.prob[column]).bool()
        return torch.where(keep, column, self.alias[column])


class ContrastMemory(nn.Module):
    """Two memory banks of L2-normalised embeddings, one per model, updated with momentum.

    `forward(v1, v2, index, contrast_index)` scores each embedding against the *other* model's
    bank at `contrast_index` (column 0 the positive, then K negatives; drawn uniformly with column
    0 = `index` when not given): `exp(<memory, v> / T) / Z`, Z fixed from the first batch as
    `mean * num_data`. Returns `(out_v1, out_v2)`, each (B, K + 1), then writes
    `normalize(m * memory[index] + (1 - m) * v)` into each bank. Buffer names (`params`,
    `memory_v1`, `memory_v2`) are MDistiller's, so its checkpoints load.

    Under torch.distributed (DDP), Z is the mean over the first batch of every process and the
    banks are written with the (index, v1, v2) of every process: the banks stay equal on all
    processes, and equal to those of one process trained on the concatenated batches.
    """

    def __init__(self, feat_dim: int, num_data: int, k: int, temperature: float = 0.07,
                 momentum: float = 0.5) -> None:
        super().__init__()
        self.num_data = num_data
        self.k, self.temperature, self.momentum = k, temperature, momentum
        self.register_buffer("params", torch.tensor([k, temperature, -1.0, -1.0, momentum]))
        self._normalisers_known = False
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_v1", torch.rand(num_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(num_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.sampler = AliasSampler(torch.ones(num_data))

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, index: torch.Tensor,
                contrast_index: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if contrast_index is None:
            contrast_index = self.sampler.draw(v1.shape[0] * (self.k + 1)).view(v1.shape[0], -1)
            contrast_index[:, 0] = index
        with torch.autocast(v1.device.type, enabled=False):
            v1, v2 = v1.float(), v2.float()
            out_v2 = torch.exp(self._scores(self.memory_v1, contrast_index, v2) / self.temperature)
            out_v1 = torch.exp(self._scores(self.memory_v2, contrast_index, v1) / self.temperature)
            with torch.no_grad():
                if not self._normalisers_known:
                    self._set_normalisers(out_v1, out_v2)
                index, v1, v2 = _gather_from_processes(index, v1.detach(), v2.detach())
            self._update(self.memory_v1, index, v1, self.momentum)
            self._update(self.memory_v2, index, v2, self.momentum)
        return out_v1 / self.params[2], out_v2 / self.params[3]

    def _set_normalisers(self, out_v1: torch.Tensor, out_v2: torch.Tensor) -> None:
        """Z from the first batch (over every process) unless the buffer holds them already (a
        resumed run). The one read of the buffer on the host, once per process and per load: later
        steps divide by the buffer on the device."""
        if bool((self.params[2:4] < 0).any()):
            sums = torch.stack([out_v1.sum(), out_v2.sum(), out_v1.new_tensor(out_v1.numel())])
            sums = _sum_over_processes(sums.double())
            self.params[2:4] = (sums[:2] / sums[2] * self.num_data).to(self.params.dtype)
        self._normalisers_known = True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._normalisers_known = False

    @staticmethod
    def _scores(memory: torch.Tensor, contrast_index: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        weights = memory[contrast_index.reshape(-1)].view(*contrast_index.shape, memory.shape[1])
        return torch.bmm(weights, v.unsqueeze(2)).squeeze(2)

    @staticmethod
    @torch.no_grad()
    def _update(memory: torch.Tensor, index: torch.Tensor, v: torch.Tensor, momentum: float) -> None:
        mixed = memory[index] * momentum + v.detach() * (1.0 - momentum)
        memory.index_copy_(0, index, mixed / mixed.pow(2).sum(dim=1, keepdim=True).sqrt())


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the processes of the default group (itself on one process)."""
    if _distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def _gather_from_processes(*tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Each tensor of every process concatenated along dim 0 in rank order (itself on one process).

    Batches may differ in size between processes: each is padded to the largest, then trimmed.
    """
    if not _distributed():
        return tensors
    world = dist.get_world_size()
    size = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[:tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        gathered.append(torch.cat([part[:n] for part, n in zip(parts, sizes)]))
    return tuple(gathered)


def contrast_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """NCE loss of CRD's Eq. 18 on (B, K + 1) scores (column 0 the positive).

    With noise probability `Pn = 1 / num_data` and `m = K`:
    `-( sum_b log(P_pos / (P_pos + m Pn + eps)) + sum_{b,j} log(m Pn / (P_neg + m Pn + eps)) ) / B`,
    eps = 1e-7.
    """
    eps = 1e-7
    noise = (scores.shape[1] - 1) / float(num_data)
    positive, negative = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(positive / (positive + noise + eps))
    log_d0 = torch.log(noise / (negative + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]
