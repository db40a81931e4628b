"""negminer: hard-negative mining and curation for contrastive embedding training.

Example:
    >>> import negminer  # doctest: +SKIP
    >>> version = negminer.mine("pairs.parquet", corpus="corpus.parquet", out="datasets")  # doctest: +SKIP
    >>> train = version.load()  # a datasets.Dataset for SentenceTransformerTrainer  # doctest: +SKIP
"""

__version__ = "0.1.0"

# The module negminer.refilter is loaded before the function of the same name is bound: a
# first import of a submodule sets it as an attribute of the package, over the function.
import negminer.refilter  # noqa: F401
from negminer.api import DatasetVersion, mine, open_version, refilter
from negminer.evaluation import evaluate

__all__ = ["DatasetVersion", "__version__", "evaluate", "mine", "open_version", "refilter"]
