"""The on-policy recipe's pure parts: pair choice, the round schedule, the round files."""

import json

import pytest

from cookbook.on_policy.rounds import (
    ROUND_STRIDE,
    ChosenPair,
    PromptRecord,
    Reply,
    RoundData,
    RoundSchedule,
    read_round,
    round_batch,
    round_dir,
    round_metrics,
    select_pair,
    split_pair_id,
    write_round,
)


def test_best_versus_worst_with_first_index_breaking_ties():
    assert select_pair([0.5, 1.0, 0.0, 1.0, 0.0]) == ChosenPair(chosen=1, rejected=2, gap=1.0)
    assert select_pair([0.2, 0.7]) == ChosenPair(1, 0, pytest.approx(0.5))


def test_all_equal_rewards_are_a_tie_and_small_gaps_are_skipped():
    assert select_pair([1.0, 1.0, 1.0]) == "tie"
    assert select_pair([0.0, 0.0]) == "tie"
    assert select_pair([0.5, 0.7], min_reward_gap=0.5) == "small_gap"
    assert select_pair([0.0, 0.5], min_reward_gap=0.5) == ChosenPair(1, 0, 0.5)
    with pytest.raises(ValueError, match="at least 2"):
        select_pair([1.0])


class FixedRounds:
    def __init__(self, sizes):
        self.sizes, self.asked = sizes, []

    def num_pairs(self, round_index, step):
        self.asked.append((round_index, step))
        return self.sizes[round_index]


def test_round_schedule_walks_each_rounds_pairs_and_cycles_short_rounds():
    source = FixedRounds([5, 12])
    schedule = RoundSchedule(source, rounds=2, steps_per_round=3, batch_size=4, micro_batch_size=2,
                             max_steps=None, seed=0)
    assert schedule.total_steps == 6 and schedule.round_of(3) == 1
    round0 = [schedule.global_batch(step) for step in range(3)]
    # 12 slots over 5 pairs: every pair at least twice, ids in round 0's range.
    flat = [split_pair_id(i) for batch in round0 for i in batch]
    assert {r for r, _ in flat} == {0} and sorted({i for _, i in flat}) == [0, 1, 2, 3, 4]
    assert all(sum(1 for _, i in flat if i == p) >= 2 for p in range(5))
    # The first 5 slots are one permutation: no pair twice before all were seen once.
    assert sorted(i for _, i in flat[:5]) == [0, 1, 2, 3, 4]
    round1 = schedule.global_batch(3)
    assert all(i // ROUND_STRIDE == 1 for i in round1)
    assert [split_pair_id(i)[1] for i in round1] == round_batch(0, 1, 12, 4, 0)
    # One round of 12 pairs in 3 steps of 4: each pair exactly once.
    assert sorted(i for step in (3, 4, 5) for i in (split_pair_id(x)[1] for x in schedule.global_batch(step))) == list(range(12))
    assert (1, 3) in source.asked


def test_round_micro_batches_are_the_training_micro_batches_of_each_rank():
    for rank in (0, 1):
        schedule = RoundSchedule(FixedRounds([7]), rounds=1, steps_per_round=2, batch_size=4, micro_batch_size=1,
                                 max_steps=None, seed=3, rank=rank, world_size=2)
        trained = [[split_pair_id(i)[1] for i in ids] for step in range(2) for ids in schedule.micro_batches(step)]
        assert schedule.round_micro_batches(0, 7) == trained
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        RoundSchedule(FixedRounds([4]), 1, 1, batch_size=3, micro_batch_size=2, max_steps=None, seed=0)


def test_max_steps_cuts_the_last_round():
    schedule = RoundSchedule(FixedRounds([8, 8]), rounds=2, steps_per_round=3, batch_size=2, micro_batch_size=2,
                             max_steps=4, seed=0)
    assert schedule.total_steps == 4
    assert len(schedule.round_micro_batches(1, 8)) == 1


def record(key, rewards, pair=None, skip=None):
    replies = [Reply(tokens=[10 + i, 2], text=f"reply {i}", reward=r, stopped=i != 1) for i, r in enumerate(rewards)]
    return PromptRecord(key=key, messages=[{"role": "user", "content": key}], prompt_tokens=[1, 5, 6],
                        replies=replies, pair=pair, skip=skip, reference_logps=(-1.5, -2.25) if pair else None)


def test_round_files_round_trip_and_metrics(tmp_path):
    records = [record("a", [1.0, 0.0, 0.5], ChosenPair(0, 1, 1.0)), record("b", [0.5, 0.5, 0.5], skip="tie")]
    data = RoundData(2, records, {"round": 2, "samples/seconds": 1.5})
    path = write_round(tmp_path, data)
    assert path == round_dir(tmp_path, 2) / "samples.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["replies"][0] == {"text": "reply 0", "reward": 1.0, "stopped": True, "tokens": [10, 2]}
    assert lines[1]["skip"] == "tie" and lines[1]["pair"] is None
    loaded = read_round(tmp_path, 2)
    assert loaded.records == records and loaded.summary == data.summary
    assert [r.key for r in loaded.paired] == ["a"]
    assert read_round(tmp_path, 3) is None

    metrics = round_metrics(records)
    assert metrics["samples/reward_mean"] == pytest.approx((1.5 + 1.5) / 6)
    assert metrics["samples/reward_best"] == pytest.approx((1.0 + 0.5) / 2)
    assert metrics["samples/reward_worst"] == pytest.approx((0.0 + 0.5) / 2)
    assert metrics["samples/pair_fraction"] == 0.5 and metrics["samples/ties"] == 1
    assert metrics["samples/reply_tokens"] == 2 and metrics["samples/cut_off_fraction"] == pytest.approx(2 / 6)


def test_a_pair_is_prompt_plus_sampled_tokens_with_weight_on_the_reply_only():
    pair = record("a", [0.0, 1.0], ChosenPair(1, 0, 1.0)).tokenized_pair()
    assert pair.chosen.tokens == [1, 5, 6, 11, 2] and pair.rejected.tokens == [1, 5, 6, 10, 2]
    assert pair.chosen.weights == [0, 0, 0, 1, 1] and pair.prompt_length == 3
    assert pair.truncated  # reply 1 was cut off at max_new_tokens
    with pytest.raises(ValueError, match="no pair"):
        record("b", [0.5, 0.5], skip="tie").tokenized_pair()


def test_an_unfinished_write_is_not_a_round(tmp_path):
    directory = round_dir(tmp_path, 0)
    directory.mkdir(parents=True)
    (directory / "samples.jsonl.tmp").write_text('{"key": "a"')
    assert read_round(tmp_path, 0) is None
