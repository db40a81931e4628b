"""negminer: hard-negative mining and curation for contrastive embedding training.

Example:
    >>> import negminer  # doctest: +SKIP
    >>> version = negminer.mine("pairs.parquet", corpus="corpus.parquet", out="datasets")  # doctest: +SKIP
    >>> train = version.load()  # a datasets.Dataset for SentenceTransformerTrainer  # doctest: +SKIP
"""

__version__ = "0.1.0"

from negminer.api import DatasetVersion, mine, open_version

__all__ = ["DatasetVersion", "__version__", "mine", "open_version"]
