"""A Linux-like kernel model: genirq and MSI domains, the GICv3 ITS and SMMUv3
drivers, the IOMMU core and dma-iommu, PCI, driving the hardware models only
through their registers and memory."""
