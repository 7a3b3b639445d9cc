"""VerSe label IDs (contract): 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 26 sacrum, 27 coccyx, 28 T13."""
from __future__ import annotations

BACKGROUND = 0
L6 = 25
SACRUM = 26
T13 = 28
NAMES: dict[int, str] = {i: f"C{i}" for i in range(1, 8)}
NAMES.update({i: f"T{i - 7}" for i in range(8, 20)})
NAMES.update({i: f"L{i - 19}" for i in range(20, 25)})
NAMES.update({25: "L6", 26: "S", 27: "Co", 28: "T13"})
IDS: dict[str, int] = {v: k for k, v in NAMES.items()}

# Anatomical order from head to feet. T13 sits between T12 and L1, L6 between L5 and the sacrum.
CRANIOCAUDAL: tuple[int, ...] = tuple(range(1, 20)) + (28,) + tuple(range(20, 25)) + (25, 26, 27)
ORDER_INDEX: dict[int, int] = {lab: i for i, lab in enumerate(CRANIOCAUDAL)}

REGIONS: dict[str, tuple[int, ...]] = {
    "cervical": tuple(range(1, 8)),
    "thoracic": tuple(range(8, 20)) + (28,),
    "lumbar": tuple(range(20, 26)),
    "sacral": (26, 27),
}


def name(label: int) -> str:
    """Contract name of a VerSe ID ("C1" ... "L5", "L6", "T13", "S")."""
    try:
        return NAMES[int(label)]
    except KeyError:
        raise ValueError(f"not a VerSe vertebra label: {label!r}") from None


def region(label: int) -> str:
    for reg, ids in REGIONS.items():
        if int(label) in ids:
            return reg
    raise ValueError(f"not a VerSe vertebra label: {label!r}")
