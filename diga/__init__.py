"""diga: DiGA domain-adaptive semantic segmentation, from training to deployment.

This module imports nothing heavy, so that ``diga.runtime`` can be used without torch.
"""

__version__ = "0.1.0"
