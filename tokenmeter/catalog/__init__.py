"""The model catalog: tokenizer, chat format and price per model pattern (see docs/catalog.md)."""

from tokenmeter.catalog.catalog_file import CatalogError
from tokenmeter.catalog.entry import CHAT_FORMATS, ModelEntry, TokenizerKind, TokenizerSpec
from tokenmeter.catalog.model_catalog import ModelCatalog

__all__ = ["CHAT_FORMATS", "CatalogError", "ModelCatalog", "ModelEntry", "TokenizerKind", "TokenizerSpec"]
