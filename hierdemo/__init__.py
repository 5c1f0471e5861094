"""hierdemo: hierarchy-aware image classification with CLIP-style models, LoRA adapters and hierarchical losses."""

from .taxonomy import Taxonomy, TaxonomyError

__version__ = "0.1.0"
__all__ = ["Taxonomy", "TaxonomyError", "__version__"]
