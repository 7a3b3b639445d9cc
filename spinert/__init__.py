"""spinert: spine CT -> vertebra centres, labels and masks, for navigation robots."""
from importlib import resources

__version__ = "0.1.0"


def asset_path(*parts: str):
    """Path of a file shipped inside the package (models, sample CT)."""
    return resources.files("spinert").joinpath(*parts)
