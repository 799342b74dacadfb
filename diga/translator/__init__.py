"""The learned source-to-target translator (METHOD stage 0): a CycleGAN-style G: S->T.

``train_translator`` trains it (``diga train translator``); ``load_translator`` gives the warm-up
the frozen generator (``warmup.translator=learned``, ``warmup.translator_path=RUN``).
"""

from diga.translator.train import load_translator, train_translator

__all__ = ["load_translator", "train_translator"]
