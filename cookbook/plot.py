"""`python -m cookbook.plot RUN [RUN ...] [out=FILE.png]`: the metric curves of one run or several in
one PNG (the library is `cookbook/training/plot.py`, which the training loop also calls)."""

from cookbook.training.plot import main

if __name__ == "__main__":
    main()
