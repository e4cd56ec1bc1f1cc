"""KTO: preference training from unpaired feedback (one completion marked desirable or not), on the
shared loop. `train_kto.py` holds the options and `main`, `step.py` the task the loop runs."""
