"""The batched reward interface (tiltmatch.rewards) and the reward transforms of the trainer."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from tiltmatch.config import DTMConfig as DTMSection
from tiltmatch.dtm.loss import dtm_loss
from tiltmatch.dtm.objective import DTMObjective
from tiltmatch.dtm.schedule import AdaptiveESSSchedule
from tiltmatch.dtm.states import random_mask_states
from tiltmatch.dtm.weights import effective_sample_size, rows_of_groups
from tiltmatch.models.codecs import CharTokenizer
from tiltmatch.objective import Phase
from tiltmatch.rewards import (
    CallableReward,
    RewardModel,
    RewardModelError,
    TaskReward,
    WeightedRewards,
    char_level_tokenizer,
    make_reward,
)
from tiltmatch.sampling.sampler import SamplingConfig
from tiltmatch.tasks import get_task
from tiltmatch.tasks.base import Example, RewardError
from tiltmatch.training.rollouts import RolloutWorker

ALPHABET = "abcdefgh :"


def _examples(n: int = 4) -> list[Example]:
    return [
        Example(prompt=f"p{i}", data={"prompt": f"p{i}", "target": "abc"[i % 3]}, uid=f"u{i}")
        for i in range(n)
    ]


def tiny_reward_model(folder, alphabet: str = ALPHABET, vocab_extra: int = 0, labels: int = 1):
    """A tiny Llama sequence classifier with a character tokenizer, saved to ``folder``."""
    tokenizer = char_level_tokenizer(alphabet)
    config = LlamaConfig(
        vocab_size=len(tokenizer) + vocab_extra,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def test_task_reward_is_todays_per_response_scoring_bit_for_bit():
    task = get_task("maze")
    examples = task.examples("train", 6, seed=0)
    codec = CharTokenizer(task.alphabet)
    worker = RolloutWorker(task, codec, task.response_length, SamplingConfig())
    g = torch.Generator().manual_seed(0)
    responses = torch.randint(3, codec.vocab_size, (6, task.response_length), generator=g)
    texts = worker.decode(responses)
    # A shortest path somewhere, so the rewards are not all zero.
    texts[0] = task.demonstration(examples[0], __import__("random").Random(0))
    responses[0] = torch.tensor(codec.encode_response(texts[0], task.response_length))
    before = torch.tensor(
        [task.checked_reward(t, e) for t, e in zip(texts, examples, strict=True)],
        dtype=torch.float32,
    )
    assert isinstance(worker.reward, TaskReward)
    after = worker.score(responses, examples)
    assert after.dtype == torch.float32 and torch.equal(before, after)
    assert float(after.max()) > 0


def test_callable_reward_gets_prompts_completions_and_columns_in_one_call():
    calls = []

    def fn(prompts, completions, target, **kwargs):
        calls.append((list(prompts), list(completions), list(target)))
        return [float(c.count(t)) for c, t in zip(completions, target, strict=True)]

    reward = CallableReward(fn)
    values = reward(["aab", "b", "ccc", "x"], _examples())
    assert values.tolist() == [2.0, 1.0, 3.0, 0.0]
    assert len(calls) == 1  # batched: one call per batch, not per row
    assert calls[0][0] == ["p0", "p1", "p2", "p3"] and calls[0][2] == ["a", "b", "c", "a"]


def test_conversational_rows_get_completions_as_assistant_messages():
    seen = {}

    def fn(prompts, completions, **kwargs):
        seen["p"], seen["c"] = prompts, completions
        return [1.0] * len(completions)

    msgs = [{"role": "user", "content": "hi"}]
    ex = [Example(prompt="hi", data={"prompt": msgs}, uid="c0")]
    CallableReward(fn)(["yo"], ex)
    assert seen["p"] == [msgs]
    assert seen["c"] == [[{"role": "assistant", "content": "yo"}]]


@pytest.mark.parametrize(
    ("returned", "needle"),
    [
        ([1.0, float("nan"), 0.0, 0.0], "not a finite number, at row 1 (example 'u1'"),
        ([1.0, 0.0, float("inf"), 0.0], "not a finite number, at row 2 (example 'u2'"),
        ([1.0, "high", 0.0, 0.0], "not a number, at row 1"),
        ([1.0, None, 0.0, 0.0], "not a number, at row 1"),
        ([1.0, 2.0], "returned 2 values for 4 completions"),
        (3.0, "not a list of numbers"),
    ],
)
def test_bad_reward_values_are_one_clear_error_naming_function_and_row(returned, needle):
    def my_reward(prompts, completions, **kwargs):
        return returned

    with pytest.raises(RewardError) as err:
        CallableReward(my_reward)(["a", "b", "c", "d"], _examples())
    assert "'my_reward'" in str(err.value) and needle in str(err.value)


def test_a_raising_reward_is_a_reward_error_naming_it():
    def broken(prompts, completions, **kwargs):
        raise KeyError("score")

    with pytest.raises(RewardError, match=r"'broken' raised KeyError: 'score'.*first example 'u0'"):
        CallableReward(broken)(["a", "b", "c", "d"], _examples())


def test_unbounded_rewards_are_accepted():
    values = CallableReward(lambda prompts, completions, **k: [-5.0, 1e6, 0.0, -0.5])(
        ["a"] * 4, _examples()
    )
    assert values.tolist() == [-5.0, 1e6, 0.0, -0.5]


def test_weighted_rewards_sum_each_checked_component():
    a = CallableReward(lambda prompts, completions, **k: [1.0, 2.0, 3.0, 4.0], name="a")
    b = CallableReward(lambda prompts, completions, **k: [10.0, 0.0, -10.0, 0.0], name="a")
    both = WeightedRewards([a, b], [0.5, 2.0])
    assert both(["x"] * 4, _examples()).tolist() == [20.5, 1.0, -18.5, 2.0]
    parts = both.components(["x"] * 4, _examples())
    assert list(parts) == ["a", "a_2"]  # duplicate names made unique for logging
    with pytest.raises(ValueError, match="1 reward_weights for 2 reward functions"):
        WeightedRewards([a, b], [1.0])
    bad = CallableReward(lambda prompts, completions, **k: [0.0, math.nan, 0.0, 0.0], name="bad")
    with pytest.raises(RewardError, match="'bad'"):
        WeightedRewards([a, bad])(["x"] * 4, _examples())


def test_make_reward_loads_file_references_and_names_unimportable_ones(tmp_path):
    (tmp_path / "mine.py").write_text(
        "def length(prompts, completions, **kw):\n    return [len(c) for c in completions]\n"
    )
    reward = make_reward(f"{tmp_path / 'mine.py'}:length")
    assert reward(["ab", "abc", "", "a"], _examples()).tolist() == [2.0, 3.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="has no 'nope'"):
        make_reward(f"{tmp_path / 'mine.py'}:nope")
    with pytest.raises(ValueError, match="no such file"):
        make_reward(f"{tmp_path / 'missing.py'}:length")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        make_reward("no_such_module_xyz:f")
    (tmp_path / "boom.py").write_text("raise RuntimeError('at import')\n")
    with pytest.raises(ValueError, match="raised RuntimeError: at import"):
        make_reward(f"{tmp_path / 'boom.py'}:f")
    with pytest.raises(RewardError, match="neither a reward model folder"):
        make_reward("just-a-word")


def test_reward_model_scores_batched_in_eval_mode_without_grad(tmp_path):
    model, tokenizer = tiny_reward_model(tmp_path / "rm")
    reward = RewardModel(tmp_path / "rm", batch_size=2)
    assert not reward.model.training
    assert not any(p.requires_grad for p in reward.model.parameters())
    completions = ["ab", "hgfedcba", "a", "cab cab"]
    examples = _examples()
    got = reward(completions, examples)
    # One row at a time, unpadded, straight through the model: the same scores.
    model.eval()
    with torch.no_grad():
        want = [
            float(model(**tokenizer(e.prompt + c, return_tensors="pt")).logits[0, 0])
            for c, e in zip(completions, examples, strict=True)
        ]
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    assert RewardModel(tmp_path / "rm", batch_size=100)(completions, examples).tolist() == (
        pytest.approx(want, abs=1e-5)
    )


def test_reward_model_uses_its_chat_template_for_conversational_rows(tmp_path):
    tiny_reward_model(tmp_path / "rm")
    tokenizer = char_level_tokenizer(
        ALPHABET, "{% for m in messages %}{{ m['content'] }}:{% endfor %}"
    )
    tokenizer.save_pretrained(tmp_path / "rm")
    reward = RewardModel(tmp_path / "rm")
    ex = Example(prompt="ab", data={"prompt": [{"role": "user", "content": "ab"}]}, uid="c")
    assert reward.texts(["cd"], [ex]) == ["ab:cd:"]
    assert reward.texts(["cd"], [Example(prompt="ab", uid="s")]) == ["abcd"]


def test_reward_model_errors_name_the_problem(tmp_path):
    tiny_reward_model(tmp_path / "small", vocab_extra=-3)  # embedding smaller than tokenizer
    with pytest.raises(RewardModelError, match="tokenizer has 13 tokens but the model's embedding"):
        RewardModel(tmp_path / "small")
    tiny_reward_model(tmp_path / "two", labels=2)
    with pytest.raises(RewardModelError, match="has 2 outputs"):
        RewardModel(tmp_path / "two")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RewardModelError, match=r"no config\.json"):
        RewardModel(tmp_path / "empty")


# -- what the trainer does to rewards (METHOD.md section 5) ----------------------------------------


def prepared(config: DTMSection, bound: float | None, calibration=None):
    """A DTM objective and a phase on which its reward baseline has been fixed."""
    objective, phase = DTMObjective(config, mask_token_id=1), Phase()

    def draw() -> torch.Tensor:
        assert calibration is not None, "this baseline must not draw a calibration sample"
        return calibration

    objective.prepare(phase, bound, draw)
    return objective, phase


def test_declared_lower_bounds():
    assert TaskReward(get_task("maze")).lower_bound == 0.0

    def f(prompts, completions, **_):
        return [0.0] * len(completions)

    assert CallableReward(f).lower_bound is None
    f.lower_bound = -2  # type: ignore[attr-defined]
    assert CallableReward(f).lower_bound == -2.0
    both = WeightedRewards([CallableReward(f), TaskReward(get_task("maze"))], [0.5, 3.0])
    assert both.lower_bound == -1.0
    # A negative weight turns a lower bound into an upper one: no bound is declared.
    assert (
        WeightedRewards([CallableReward(f), TaskReward(get_task("maze"))], [-1.0, 1.0]).lower_bound
        is None
    )


def test_task_rewards_take_the_bound_zero_and_weights_stay_exp_h_r():
    """auto -> bound 0 for every built-in task: w = e^{h r} bit for bit, as before."""
    objective, phase = prepared(DTMSection(), bound=0.0)
    assert phase.extra == {"baseline": "bound", "reward_baseline": 0.0}
    r = torch.rand(5, 4, generator=torch.Generator().manual_seed(0))
    w = objective.sample_weights(*rows_of_groups(r), 1.5, phase)
    assert torch.equal(w, torch.exp(1.5 * (r.reshape(-1) - 0.0)))


def test_negative_rewards_take_a_calibrated_baseline_not_a_per_group_shift():
    """No declared bound: b is the lowest reward of a calibration sample, one number for every
    prompt, independent of the rollouts it weights (METHOD.md section 5). The old per-group
    shift (group_min) stays available and differs."""
    calibration = torch.tensor([[-3.0, 1.0], [-0.5, 2.0]])
    objective, phase = prepared(DTMSection(c=1.0), bound=None, calibration=calibration)
    assert phase.extra == {"baseline": "calibrated", "reward_baseline": -3.0}
    rewards = torch.tensor([[-4.0, -2.5], [-1.0, 3.0]])
    rows, groups = rows_of_groups(rewards)
    w = objective.sample_weights(rows, groups, 1.0, phase)
    assert torch.allclose(w, torch.exp(rows + 3.0))
    stats = objective.begin_stage(phase, rewards)
    assert stats["reward_baseline"] == -3.0 and stats["below_baseline"] == 0.25
    # The one row below b has w < 1: with c = 1 its target may need the clamp, which is counted.
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, 9, (4, 6), generator=g)
    states = random_mask_states(x, 1, g, True)
    teacher = torch.randn(4, 6, 9, generator=g)
    student = torch.randn(4, 6, 9, generator=g)
    _, stats = dtm_loss(student, x, states, w, 1.0, teacher)
    assert stats.clamp_rate > 0.0
    _, stats = dtm_loss(student, x, states, w.clamp(min=1.0), 1.0, teacher)
    assert stats.clamp_rate == 0.0  # only the row below b could fire
    # The biased per-group shift of earlier versions: each group's minimum gets weight 1.
    shifted, phase = prepared(DTMSection(baseline="group_min"), bound=None)
    assert shifted.sample_weights(rows, groups, 1.0, phase).tolist() == pytest.approx(
        [1.0, math.exp(1.5), 1.0, math.exp(4.0)]
    )


def test_bound_baseline_needs_a_declared_bound():
    with pytest.raises(ValueError, match=r"dtm\.reward_lower_bound"):
        prepared(DTMSection(baseline="bound"), bound=None)
    _, phase = prepared(DTMSection(baseline="bound"), bound=-1.0)
    assert phase.extra["reward_baseline"] == -1.0


def test_large_rewards_overflow_fixed_h_clearly_and_adaptive_h_keeps_ess():
    # A spread of 60 overflows e^{h r} in float32 at h = 2 (e^120); the adaptive h does not.
    # (Its floor of 1e-3 h_max takes over for spreads of several hundred: rescale such
    # rewards with train.reward_scale, which is a rescaling of a_end's units.)
    rewards = torch.tensor([[0.0, 20.0, 40.0, 60.0], [5.0, 10.0, 50.0, -10.0]])
    objective, phase = prepared(DTMSection(h=2.0), bound=None, calibration=rewards)
    with pytest.raises(FloatingPointError, match="adaptive schedule"):
        objective.sample_weights(*rows_of_groups(rewards), 2.0, phase)
    schedule = AdaptiveESSSchedule(rho=0.5, h_max=4.0, a_end=10.0)
    h = schedule.next_h(0.0, rewards, 0)
    w = objective.sample_weights(*rows_of_groups(rewards), h, phase).view_as(rewards)
    assert torch.isfinite(w).all() and 0.004 < h < 0.5
    assert float(effective_sample_size(w).mean()) == pytest.approx(0.5, abs=0.02)
