"""Deterministic micro-batches: the same seed gives the same order, so a resumed run continues
exactly where the killed one stopped (skip ``step * grad_accum`` micro-batches and go on)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from phibox.train.data import IGNORE_INDEX, Tokenized


def micro_batch_indices(n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> Iterator[list[int]]:
    """Endless micro-batches of example indices: reshuffled each epoch, split across ranks."""
    for epoch in itertools.count():
        order = list(range(n))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        chunks = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        per_rank = max(1, math.ceil(len(chunks) / world))
        chunks += chunks[: per_rank * world - len(chunks)]  # pad so every rank gets the same count
        yield from chunks[rank::world]


def steps_per_epoch(n: int, batch_size: int, grad_accum: int, world: int = 1) -> int:
    """Optimizer steps in one pass over n examples (at least one)."""
    micro = math.ceil(math.ceil(n / batch_size) / world)
    return max(1, micro // grad_accum)


def collate(items: Sequence[Tokenized], pad_id: int, device: Any) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item; padding is masked out of attention and loss."""
    width = max(len(t.input_ids) for t in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, t in enumerate(items):
        n = len(t.input_ids)
        ids[row, :n] = torch.tensor(t.input_ids)
        labels[row, :n] = torch.tensor(t.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def eval_loss(model: Any, items: Sequence[Tokenized], pad_id: int, device: Any, batch_size: int = 8) -> float:
    """Mean cross-entropy per trained (assistant) token over the eval split."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = collate(chunk, pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum",
        )
        total += float(loss)
        count += int((shift_labels != IGNORE_INDEX).sum())
    if was_training:
        model.train()
    return total / max(count, 1)
