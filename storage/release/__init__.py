"""Releasing a dataset: the Hugging Face layout, its splits and card, and the checks before it.

``splits`` assigns rows to splits by family, ``hf`` writes the folder, ``facts`` gathers what
the card (and the Prefect run's card artifact) state, ``card`` and ``plots`` render them.
"""
