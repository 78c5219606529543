"""The remapping unit's translation caches (VT-d spec 6.2).

Context-cache, PASID-cache, IOTLB and paging-structure caches, all on one LRU base.

Not modelled: the interrupt-entry cache (interrupt remapping is out of scope; IEC
invalidations are only counted by ``hardware.invalidation.iec``).
"""

from vtdsim.hardware.caches.base import CacheStats, LruCache
from vtdsim.hardware.caches.context_cache import ContextCache, ContextCacheEntry
from vtdsim.hardware.caches.iotlb import Iotlb, IotlbEntry
from vtdsim.hardware.caches.paging_structure_cache import PagingStructureCache, PscEntry
from vtdsim.hardware.caches.pasid_cache import PasidCache, PasidCacheEntry

__all__ = [
    "CacheStats",
    "ContextCache",
    "ContextCacheEntry",
    "Iotlb",
    "IotlbEntry",
    "LruCache",
    "PagingStructureCache",
    "PasidCache",
    "PasidCacheEntry",
    "PscEntry",
]
