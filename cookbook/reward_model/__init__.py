"""Reward modelling: a scalar head on a causal LM, trained on preference pairs (Bradley-Terry), saved
as a Hugging Face sequence classifier that the on-policy recipe's `reward=reward_model` reads."""
