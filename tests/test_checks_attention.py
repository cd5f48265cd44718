"""The checks of notebook 01's exercises: right answers pass, wrong ones get a useful hint,
and every stored solution passes its own check."""

from __future__ import annotations

import math

import pytest
import torch

from kvlab import checks
from kvlab.attention import attention_maps, layer0_queries_keys
from kvlab.widgets import cached_model

TEXT = "The cat sat on the mat. The cat sat on the mat."


@pytest.fixture(scope="module")
def lm():
    return cached_model("random:tiny-llama")


@pytest.fixture(scope="module")
def maps(lm):
    return attention_maps(lm, TEXT)


@pytest.fixture(scope="module")
def head_data(lm, maps):
    q, k = layer0_queries_keys(lm, TEXT, head=1)
    return q, k, maps.head(0, 1)


def test_check_result_shows_verdict_and_hint():
    verdict = checks.wrong("off by one", "count the diagonal")
    assert not verdict and str(verdict) == "Not yet: off by one\nHint: count the diagonal"
    assert checks.correct("yes") and "Correct: yes" in checks.correct("yes")._repr_html_()


def test_predictions():
    assert checks.check_predictions(5, 1.0, 15)
    assert checks.check_predictions(5, 1, 15.0)
    assert "every cell" in checks.check_predictions(5, 1.0, 25).message
    assert "diagonal" in checks.check_predictions(5, 1.0, 10).message
    assert "softmax" in checks.check_predictions(5, 5, 15).hint
    assert "no answer yet" in checks.check_predictions(5, None, 15).message
    assert "numbers" in checks.check_predictions(5, "one", 15).message


def _scores(q, k):
    return q @ k.T / math.sqrt(q.shape[-1])


def _future(n):
    return torch.ones(n, n, dtype=torch.bool).triu(1)


def test_by_hand_right_answer(head_data):
    q, k, model = head_data
    n = q.shape[0]
    mine = _scores(q, k).masked_fill(_future(n), float("-inf")).softmax(-1)
    assert checks.check_by_hand(mine, q, k, model)
    assert checks.check_by_hand(mine.numpy(), q, k, model)  # an array is fine too


def test_by_hand_wrong_answers_get_their_own_hint(head_data):
    q, k, model = head_data
    n = q.shape[0]
    unscaled = (q @ k.T).masked_fill(_future(n), float("-inf")).softmax(-1)
    unmasked = _scores(q, k).softmax(-1)
    wrong_dim = _scores(q, k).masked_fill(_future(n), float("-inf")).softmax(0)
    masked_late = _scores(q, k).softmax(-1).tril()
    cases = [(unscaled, "not scaled"), (unmasked, "no causal mask"),
             (wrong_dim, "wrong dimension"), (masked_late, "after the softmax"),
             (torch.zeros(n, n), "largest difference"), (torch.zeros(n, n + 1), "shape"),
             (None, "no answer yet"), ("weights", "tensor")]
    for answer, expected in cases:
        verdict = checks.check_by_hand(answer, q, k, model)
        assert not verdict and expected in verdict.message, (expected, verdict)


def test_previous_token_head(maps):
    previous = maps.summaries().previous[0]
    best, worst = int(previous.argmax()), int(previous.argmin())
    assert checks.check_previous_token_head(best, maps)
    verdict = checks.check_previous_token_head(worst, maps)
    assert not verdict and "another head" in verdict.message and str(best) not in verdict.hint
    assert "0 to 3" in checks.check_previous_token_head(9, maps).message
    assert "no answer yet" in checks.check_previous_token_head(None, maps).message


def test_sink_layer(maps):
    per_layer = maps.weights[:, :, 1:, 0].mean(dim=(1, 2))
    best, worst = int(per_layer.argmax()), int(per_layer.argmin())
    assert checks.check_sink_layer(best, maps)
    assert not checks.check_sink_layer(worst, maps)
    assert "whole number" in checks.check_sink_layer(True, maps).message


def run_solution(name, maps, **extra) -> dict:
    """Execute a stored solution the way a student would paste it; return its variables."""
    scope = {"torch": torch, "maps": maps, "n": maps.n_tokens, **extra}
    exec(str(checks.solution(name)), scope)
    return scope


def test_every_solution_passes_its_check(maps, head_data):
    q, k, model = head_data
    answers = run_solution("predictions", maps)
    assert checks.check_predictions(maps.n_tokens, answers["row_sum"], answers["n_visible"])
    answers = run_solution("by_hand", maps, q=q, k=k)
    assert checks.check_by_hand(answers["my_weights"], q, k, model)
    assert checks.check_previous_token_head(run_solution("previous_token_head", maps)["my_head"],
                                            maps)
    assert checks.check_sink_layer(run_solution("sink_layer", maps)["my_layer"], maps)


def test_solution_of_unknown_exercise_names_the_known_ones():
    with pytest.raises(KeyError, match="by_hand"):
        checks.solution("nope")


def test_non_numbers_are_never_correct_and_numpy_scalars_are_accepted():
    import numpy as np

    from kvlab import checks

    for row_sum, n_visible in [(float("nan"), 21), (1.0, 21.7), (1.0, float("inf")), ("1", 21),
                               (True, 21)]:
        assert not checks.check_predictions(6, row_sum, n_visible)
    assert checks.check_predictions(6, np.float32(1.0), np.int64(21))
