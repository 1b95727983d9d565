"""Evaluation of frozen features: weighted kNN (``knn``), linear probe (``linear``) and few-label
probe (``fewlabel``), and the benchmark protocol that runs them on an encoder (``protocol``).

Kept import-free so ``import replearn.evaluate.knn`` does not pull in Lightning or sklearn.
"""
