"""fbnet-fast: hardware-aware neural architecture search in the style of FBNet.

Wu et al., "FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable Neural
Architecture Search", CVPR 2019 (arXiv 1812.03443).
"""

from .errors import FBNetError
from .space import Architecture, SearchSpace, load_space

__version__ = "0.1.0"
__all__ = ["Architecture", "FBNetError", "SearchSpace", "load_space", "__version__"]
