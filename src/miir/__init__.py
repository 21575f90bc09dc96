"""miir: sequential recommendation as missing information imputation (MIIR)."""

__version__ = "0.1.0"
