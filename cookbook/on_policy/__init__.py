"""On-policy preference training: the policy samples replies to prompts, a reward scores them, and
best-versus-worst pairs are trained with DPO. Prompt sources (`prompts=`) are in `prompts.py`,
rewards (`reward=`) in `rewards.py`."""
