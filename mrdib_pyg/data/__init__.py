from .amazon_mm import AmazonMM  # noqa: F401
from .synthetic import SyntheticMM, attach_generated_features  # noqa: F401
from .synthetic import generate_synthetic  # noqa: F401
from .graphs import item_knn_graph, user_cooccurrence_graph  # noqa: F401
