"""Accuracy check: which variants' speed-ups can be compared with dense at all.

A network that lost most of its accuracy, or that predicts one class for every image, is
not a faster version of dense: its latency says nothing about what compression costs. A
variant more than `report.max_accuracy_drop` percentage points below dense, or within
`CHANCE_MARGIN_POINTS` of chance (1 / classes), is marked not comparable in report.json,
report.md and the plot; when dense itself is at chance, no variant is comparable. The check
reads the report dictionary only, so an old report.json can be checked again.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHANCE_MARGIN_POINTS", "mark_comparable_", "not_comparable_message"]

CHANCE_MARGIN_POINTS = 2.0  # within this many points of chance counts as "at chance"


def _reasons(
    variants: list[dict[str, Any]], num_classes: int, max_drop_points: float
) -> dict[str, str | None]:
    """Variant name -> why it is not comparable (None: comparable). Dense comes first."""
    chance = 1.0 / num_classes

    def at_chance(accuracy: float) -> str | None:
        if accuracy > chance + CHANCE_MARGIN_POINTS / 100:
            return None
        return (
            f"at chance: {100 * accuracy:.2f}% test accuracy, within {CHANCE_MARGIN_POINTS:g} "
            f"points of {100 * chance:.2f}% ({num_classes} classes)"
        )

    dense = variants[0]
    dense_reason = at_chance(dense["accuracy"])
    out: dict[str, str | None] = {dense["name"]: dense_reason}
    for v in variants[1:]:
        reasons = [at_chance(v["accuracy"])]
        drop = 100 * (dense["accuracy"] - v["accuracy"])
        if dense_reason:  # nothing compares with a baseline that learned nothing
            reasons.insert(0, "the dense baseline is at chance")
        elif drop > max_drop_points:
            reasons.append(
                f"{drop:.2f} points below dense ({100 * v['accuracy']:.2f}% vs "
                f"{100 * dense['accuracy']:.2f}%; report.max_accuracy_drop: {max_drop_points:g})"
            )
        out[v["name"]] = "; ".join(r for r in reasons if r) or None
    return out


def mark_comparable_(
    report: dict[str, Any], num_classes: int, max_drop_points: float
) -> dict[str, str]:
    """Add `comparable` and `not_comparable_reason` to every variant and speed-up entry, and
    an `accuracy_check` summary; returns the not-comparable variants with their reasons."""
    reasons = _reasons(report["variants"], num_classes, max_drop_points)
    for v in report["variants"]:
        v["comparable"] = reasons[v["name"]] is None
        v["not_comparable_reason"] = reasons[v["name"]]
    for s in report["speedups"]:
        s["comparable"] = reasons[s["variant"]] is None
        s["not_comparable_reason"] = reasons[s["variant"]]
    failed = {name: reason for name, reason in reasons.items() if reason is not None}
    report["accuracy_check"] = {
        "max_accuracy_drop_points": max_drop_points,
        "chance_accuracy": 1.0 / num_classes,
        "chance_margin_points": CHANCE_MARGIN_POINTS,
        "num_classes": num_classes,
        "not_comparable": sorted(failed, key=list(reasons).index),
    }
    return failed


def not_comparable_message(failed: dict[str, str]) -> str:
    """One line for the console: the variants, why, and that the files are written."""
    listed = ", ".join(f"{name} ({reason})" for name, reason in failed.items())
    return (
        f"accuracy check: not comparable, so no speed-up of theirs is a win: {listed}; every "
        "file was written and report.md marks them; train longer (train.epochs, "
        "shrink.fine_tune_epochs), remove less, or raise report.max_accuracy_drop"
    )
