"""On-policy training: the policy samples replies to prompts, a reward scores them, and the recipe
trains on what it wrote (best-versus-worst pairs with DPO).

- `prompts.py`: `PromptItem`, `PromptSource` and the `prompts=` family (files, `prompts:<data set>`);
- `ifeval_synthetic.py`, `ifeval_instructions.py`: the default prompts, made up with IFEval
  instructions a reward can check;
- `rewards.py`: `Reward` and the `reward=` family (IFEval checkers, reward models, functions);
- `rounds.py`: one round from sampling to pairs on disk, and the schedule the shared loop walks;
- `train_on_policy.py`: the recipe (Config, task, main).

A user's prompt source subclasses `cookbook.on_policy.PromptSource` and a user's reward
`cookbook.on_policy.Reward`. Importing the package registers every built-in.
"""

from cookbook.on_policy import ifeval_synthetic  # noqa: F401  (declares the default prompt source)
from cookbook.on_policy.prompts import PromptItem, PromptSource
from cookbook.on_policy.rewards import Reward

__all__ = ["PromptItem", "PromptSource", "Reward"]
