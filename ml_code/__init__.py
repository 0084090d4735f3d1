"""Code that runs inside SageMaker containers and, unchanged, in the local backend.

No Dagster imports here: only PyTorch, NumPy, Pillow, pandas and pandera.
"""

CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
"""The seven HAM10000 diagnoses, in label order (alphabetical, as in the ISIC 2018 task 3)."""
