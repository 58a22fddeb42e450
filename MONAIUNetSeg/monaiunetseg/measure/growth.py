"""Change of a finding between two time points: volume, mean tumour diameter (and its velocity), bidimensional
product, and the RANO-LGG category the product change alone would give.

Research use only: a RANO-LGG response also needs the clinical state, corticosteroid use, new lesions, contrast
enhancement and confirmation on a later scan, none of which a pair of labelmaps holds.
"""

from __future__ import annotations

import datetime

DAYS_PER_YEAR = 365.25
# Below this interval a yearly rate mostly extrapolates the two readings' own error (a 1 mm difference over a
# day is 365 mm/year): the velocity is still given, with a remark.
MIN_VELOCITY_DAYS = 90
# RANO-LGG on the change of the sum of products of perpendicular diameters (SPD), in per cent.
PROGRESSION_PCT, MINOR_RESPONSE_PCT, PARTIAL_RESPONSE_PCT = 25.0, -25.0, -50.0
CAVEAT = ("research use only: the category comes from the product change alone; RANO-LGG also needs clinical "
          "status, steroid use, new lesions, enhancement and a confirming scan")
COLUMNS = ["baseline_date", "followup_date", "interval_days", "baseline_volume_ml", "followup_volume_ml",
           "volume_change_ml", "volume_change_pct", "baseline_mtd_mm", "followup_mtd_mm", "mtd_change_mm",
           "mtd_velocity_mm_per_year", "baseline_product_mm2", "followup_product_mm2", "product_change_pct",
           "rano_lgg_category"]


def parse_date(text: str) -> datetime.date:
    """``YYYY-MM-DD`` (also ``YYYYMMDD``, as DICOM writes dates)."""
    for pattern in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.datetime.strptime(text.strip(), pattern).date()
        except ValueError:
            continue
    raise ValueError(f"date {text!r}: expected YYYY-MM-DD")


def percent_change(before: float, after: float) -> float | None:
    return None if before == 0 else (after - before) / before * 100.0


def rano_lgg_category(baseline_product: float, followup_product: float, baseline_volume: float | None = None,
                      followup_volume: float | None = None) -> str:
    """The RANO-LGG category of a change in the sum of products of perpendicular diameters. A lesion too thin for
    a product (a line, one voxel: product 0 but volume > 0) is still a lesion: never "complete response", which
    needs none left, but "not measurable" (volumes given; without them a zero product is taken for no lesion)."""
    left = followup_product > 0 or bool(followup_volume)
    before = baseline_product > 0 or bool(baseline_volume)
    if not left:
        return "complete response" if before else "no measurable lesion"
    if followup_product == 0 or (baseline_product == 0 and before):
        return "not measurable (a lesion without a bidimensional product: too thin to measure)"
    if baseline_product == 0:
        return "progressive disease"  # a lesion where there was none
    change = percent_change(baseline_product, followup_product)
    if change >= PROGRESSION_PCT:
        return "progressive disease"
    if change <= PARTIAL_RESPONSE_PCT:
        return "partial response"
    if change <= MINOR_RESPONSE_PCT:
        return "minor response"
    return "stable disease"


def growth(baseline: dict, followup: dict, dates: tuple[datetime.date, datetime.date] | None = None) -> dict:
    """The change between two measurement rows (``shape.measure_labelmap``); velocities need ``dates``."""
    mtd0, mtd1 = baseline["mean_tumour_diameter_mm"], followup["mean_tumour_diameter_mm"]
    p0, p1 = baseline["sum_products_mm2"], followup["sum_products_mm2"]
    days = None if dates is None else (dates[1] - dates[0]).days
    if days is not None and days <= 0:
        raise ValueError(f"the follow-up ({dates[1]}) must be later than the baseline ({dates[0]})")
    return {
        "baseline_date": None if dates is None else dates[0].isoformat(),
        "followup_date": None if dates is None else dates[1].isoformat(),
        "interval_days": days,
        "baseline_volume_ml": baseline["volume_ml"], "followup_volume_ml": followup["volume_ml"],
        "volume_change_ml": followup["volume_ml"] - baseline["volume_ml"],
        "volume_change_pct": percent_change(baseline["volume_ml"], followup["volume_ml"]),
        "baseline_mtd_mm": mtd0, "followup_mtd_mm": mtd1, "mtd_change_mm": mtd1 - mtd0,
        "mtd_velocity_mm_per_year": None if days is None else (mtd1 - mtd0) / (days / DAYS_PER_YEAR),
        "baseline_product_mm2": p0, "followup_product_mm2": p1,
        "product_change_pct": percent_change(p0, p1),
        "rano_lgg_category": rano_lgg_category(p0, p1, baseline["volume_ml"], followup["volume_ml"]),
        "caveat": CAVEAT,
        "remarks": remarks(days),
    }


def remarks(days: int | None) -> list[str]:
    """What the reader of the numbers should know: a velocity over a very short interval."""
    if days is not None and days < MIN_VELOCITY_DAYS:
        return [f"the velocity extrapolates a {days}-day interval to a year (under {MIN_VELOCITY_DAYS} days, it "
                "mostly reflects the two measurements' own error)"]
    return []


def _signed(value: float | None, fmt: str, unit: str) -> str:
    return "n/a" if value is None else f"{value:+{fmt}}{unit}"


def summary_line(change: dict) -> str:
    """One readable line of a :func:`growth` result."""
    velocity = ("no dates: no velocity" if change["mtd_velocity_mm_per_year"] is None else
                f"{change['mtd_velocity_mm_per_year']:+.2f} mm/year over {change['interval_days']} days")
    review = f"REVIEW ({change['review_reasons']}): " if change.get("review") == "yes" else ""
    notes = "".join(f"; note: {r}" for r in change.get("remarks", []))
    return (f"{review}volume {change['baseline_volume_ml']:.2f} -> {change['followup_volume_ml']:.2f} mL "
            f"({_signed(change['volume_change_ml'], '.2f', ' mL')}, "
            f"{_signed(change['volume_change_pct'], '.1f', ' %')}); "
            f"MTD {change['baseline_mtd_mm']:.1f} -> {change['followup_mtd_mm']:.1f} mm ({velocity}); "
            f"product {change['baseline_product_mm2']:.0f} -> {change['followup_product_mm2']:.0f} mm2 "
            f"({_signed(change['product_change_pct'], '.1f', ' %')}): {change['rano_lgg_category']} "
            f"by RANO-LGG product change ({CAVEAT}){notes}")
