"""studylib: evidence, not folklore, on how regularization changes overfitting."""

__version__ = "0.1.0"
