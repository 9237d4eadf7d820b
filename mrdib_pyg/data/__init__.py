from .amazon_mm import AmazonMM  # noqa: F401
