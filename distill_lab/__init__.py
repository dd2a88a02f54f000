"""distill-lab: sweeps of knowledge distillation for BERT-like token classifiers."""

__version__ = "0.1.0"
