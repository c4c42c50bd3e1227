"""Judges: batched scorers ``score(prompts, responses) -> list[float]``, built from typed specs, made robust and
combined by weight.

- `specs`: what a config holds (kinds and their options), checked without building anything;
- `factory`: specs to scorers and weighted judges;
- `robust`, `combine`: the wrapper that absorbs bad samples and flaky calls, and the weighted sum;
- the kinds: `reward_model` (``hf_reward_model``), `sentiment` (``sentiment``, ``vader``), `safety` (``toxicity``,
  ``refusal``); ``function`` is a user callable by import path.
Heavy libraries (torch, transformers, scikit-learn) are imported only when a scorer of that kind is built.
"""
