"""Supervised fine-tuning (SFT) on the shared loop: conversations (from `cookbook.datasets.supervised`)
-> packed rows -> the NLL of the trained tokens. `train_sft.py` is the recipe (Config, task, main);
`batching.py` lays sequences out in rows, `step.py` is one micro-batch's loss and the held-out NLL."""
