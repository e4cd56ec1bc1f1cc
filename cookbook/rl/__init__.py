"""RL with verifiable rewards (the GRPO family): the policy samples groups of replies, a reward
scores them, and a clipped policy gradient on group-relative advantages trains it.

- `losses.py`: advantages, the clipped per-token policy gradient, the k3 KL, loss aggregation;
- `groups.py`: one round from sampling to the replies trained on (on disk), and the schedule;
- `train_rl.py`: the recipe (Config, task, main).

Prompts, rewards and sampling are the on-policy recipe's (`cookbook.on_policy`).
"""
