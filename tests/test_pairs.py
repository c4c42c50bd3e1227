from iterdpo.config.schema import PairsConfig
from iterdpo.rounds.pairs import build_pairs
from iterdpo.core.records import Sample


def _sample(prompt_index: int, token: int, length: int = 1) -> Sample:
    return Sample(prompt_index, f"p{prompt_index}", [1, 2], [token] * length, f"t{token}", [-1.0] * length, True)


def test_best_vs_worst_per_prompt_and_ties_counted():
    samples = [_sample(0, 10), _sample(0, 11), _sample(0, 12), _sample(1, 20), _sample(1, 21), _sample(2, 30)]
    scores = [0.5, 0.9, -0.2, 0.3, 0.3, 1.0]
    result = build_pairs(samples, scores, PairsConfig(), safety=[1.0, 0.9, 0.3, 1.0, 1.0, 1.0])
    assert result.ties_dropped == 2  # prompt 1 ties, prompt 2 has a single sample
    assert len(result.pairs) == 1
    pair = result.pairs[0]
    assert (pair.chosen_ids, pair.rejected_ids) == ([11], [12])
    assert (pair.chosen_score, pair.rejected_score) == (0.9, -0.2)
    assert (pair.chosen_safety, pair.rejected_safety) == (0.9, 0.3)
    assert (pair.chosen_index, pair.rejected_index) == (1, 2)


def test_unscored_samples_are_left_out_and_counted():
    samples = [_sample(0, 1), _sample(0, 2), _sample(0, 3)]
    result = build_pairs(samples, [float("nan"), 0.5, 0.1], PairsConfig())
    assert result.unscored == 1
    assert [(p.chosen_index, p.rejected_index) for p in result.pairs] == [(1, 2)]


def test_min_margin_drops_close_pairs():
    samples = [_sample(0, 1), _sample(0, 2), _sample(1, 3), _sample(1, 4)]
    result = build_pairs(samples, [0.1, 0.2, 0.0, 1.0], PairsConfig(min_margin=0.5))
    assert [p.prompt_index for p in result.pairs] == [1]
    assert result.below_margin == 1 and result.ties_dropped == 0


def test_all_above_margin_takes_every_ordered_pair():
    samples = [_sample(0, 1), _sample(0, 2), _sample(0, 3), _sample(0, 4)]
    result = build_pairs(samples, [0.0, 1.0, 2.0, 2.0], PairsConfig(strategy="all_above_margin", min_margin=1.0))
    # 6 candidate pairs: (2,2) tie; gaps 1,1 (2-1), 2,2 (2-0), 1 (1-0) all >= 1
    assert result.ties_dropped == 1 and result.below_margin == 0
    assert len(result.pairs) == 5
    assert all(p.chosen_score > p.rejected_score for p in result.pairs)


def test_best_vs_random_is_seeded_and_never_pairs_best_with_itself():
    samples = [_sample(0, t) for t in range(5)]
    scores = [0.0, 1.0, 2.0, 3.0, 4.0]
    config = PairsConfig(strategy="best_vs_random")
    first = build_pairs(samples, scores, config, seed=1).pairs
    assert first == build_pairs(samples, scores, config, seed=1).pairs
    assert len(first) == 1 and first[0].chosen_ids == [4] and first[0].rejected_ids != [4]
    drawn = {build_pairs(samples, scores, config, seed=s).pairs[0].rejected_ids[0] for s in range(20)}
    assert len(drawn) > 1


def test_length_normalisation_changes_the_winner():
    samples = [_sample(0, 1, length=10), _sample(0, 2, length=1)]
    assert build_pairs(samples, [5.0, 1.0], PairsConfig()).pairs[0].chosen_ids == [1] * 10
    normalised = build_pairs(samples, [5.0, 1.0], PairsConfig(length_normalize=True)).pairs[0]
    assert normalised.chosen_ids == [2]  # 5/10 = 0.5 < 1/1


def test_safedpo_puts_the_safe_response_first_then_labels_both():
    """SafeDPO (Kim et al. 2025) re-orders a pair whose chosen response is harmful and whose rejected one is safe,
    so the safe one wins; safety scores become 0/1 labels at pairs.safety_threshold. Other pairs keep the judge's
    order."""
    samples = [_sample(0, 1), _sample(0, 2), _sample(1, 3), _sample(1, 4), _sample(2, 5), _sample(2, 6)]
    scores = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3]
    safety = [0.2, 0.95, 0.9, 0.1, 0.3, 0.4]  # prompt 0: harmful best; prompt 1: safe best; prompt 2: both harmful
    result = build_pairs(samples, scores, PairsConfig(), safety=safety, safe_first=True)
    assert result.safety_reordered == 1
    orders = [(p.chosen_index, p.rejected_index, p.chosen_safety, p.rejected_safety) for p in result.pairs]
    assert orders == [(1, 0, 1.0, 0.0), (2, 3, 1.0, 0.0), (4, 5, 0.0, 0.0)]
    plain = build_pairs(samples, scores, PairsConfig(), safety=safety)  # other losses: the judge's order, raw scores
    assert [(p.chosen_index, p.chosen_safety) for p in plain.pairs] == [(0, 0.2), (2, 0.9), (4, 0.3)]
    assert plain.safety_reordered == 0
    stricter = build_pairs(samples, scores, PairsConfig(safety_threshold=0.95), safety=safety, safe_first=True)
    assert [p.chosen_index for p in stricter.pairs] == [1, 2, 4]  # 0.9 is harmful at 0.95: prompt 1 keeps its order
    assert [(p.chosen_safety, p.rejected_safety) for p in stricter.pairs][1] == (0.0, 0.0)
