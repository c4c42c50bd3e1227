"""Preference pairs of random token ids, for learner tests: lengths vary with the pair's index (base + i % spread)."""

import torch

from iterdpo.core.records import Pair


def random_pairs(count: int, prompt: tuple[int, int], chosen: tuple[int, int], rejected: tuple[int, int],
                 seed: int = 0) -> list[Pair]:
    gen = torch.Generator().manual_seed(seed)

    def ids(length: tuple[int, int], i: int) -> list[int]:
        base, spread = length
        return torch.randint(0, 1000, (base + i % spread,), generator=gen).tolist()

    return [Pair(chosen_index=2 * i, rejected_index=2 * i + 1, prompt_index=i, prompt="", prompt_ids=ids(prompt, i),
                 chosen_ids=ids(chosen, i), rejected_ids=ids(rejected, i), chosen_text="", rejected_text="",
                 chosen_score=1.0, rejected_score=0.0) for i in range(count)]
