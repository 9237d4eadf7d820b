from .amazon_mm import AmazonMM  # noqa: F401
from .synthetic import SyntheticMM, attach_generated_features  # noqa: F401
