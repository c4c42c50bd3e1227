from iterdpo.pairs import best_vs_worst
from iterdpo.samples import Sample


def _sample(prompt_index: int, token: int) -> Sample:
    return Sample(prompt_index, f"p{prompt_index}", [1, 2], [token], f"t{token}", [-1.0], True)


def test_best_vs_worst_per_prompt_and_ties_counted():
    samples = [_sample(0, 10), _sample(0, 11), _sample(0, 12), _sample(1, 20), _sample(1, 21), _sample(2, 30)]
    scores = [0.5, 0.9, -0.2, 0.3, 0.3, 1.0]
    result = best_vs_worst(samples, scores)
    assert result.ties_dropped == 2  # prompt 1 ties, prompt 2 has a single sample
    assert len(result.pairs) == 1
    pair = result.pairs[0]
    assert (pair.chosen_ids, pair.rejected_ids) == ([11], [12])
    assert (pair.chosen_score, pair.rejected_score) == (0.9, -0.2)


def test_min_margin_drops_close_pairs():
    samples = [_sample(0, 1), _sample(0, 2), _sample(1, 3), _sample(1, 4)]
    result = best_vs_worst(samples, [0.1, 0.2, 0.0, 1.0], min_margin=0.5)
    assert [p.prompt_index for p in result.pairs] == [1]
    assert result.below_margin == 1 and result.ties_dropped == 0
