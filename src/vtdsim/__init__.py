"""vtdsim: an executable model of Intel VT-d DMA remapping, the Linux intel-iommu driver's
protocols on top of it, and a VMM emulating it.

Layers (imports point downward only): hardware <- devices <- driver <- virtualization <-
checker / simulation / traces <- cli.
"""

__version__ = "0.1.0"
