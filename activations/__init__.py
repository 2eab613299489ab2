"""The HDF5 activation store: schema, off-thread resumable writer, lazy reader, pooling.

Imports neither ``interp`` nor ``probes``: a store made on a GPU cluster reads on a laptop.
"""

from activations.pooling import Pooling
from activations.reader import ActivationStore
from activations.schema import SCHEMA_VERSION, StoreError, StoreLayout
from activations.selection import parse_index_spec
from activations.writer import StoreWriter

__all__ = [
    "ActivationStore",
    "Pooling",
    "SCHEMA_VERSION",
    "StoreError",
    "StoreLayout",
    "StoreWriter",
    "parse_index_spec",
]
