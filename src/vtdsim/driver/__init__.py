"""The Linux intel-iommu driver's protocols (profiles: Linux 6.1 and mainline), written once as
generators of atomic steps (``driver.steps``) and run by the direct executor or the checker."""
