"""The table `whaleid chaos` prints, one row per scenario."""

from __future__ import annotations

COLUMNS = ("scenario", "uploaded", "identified", "dead-lettered", "lost", "duplicated", "redelivered", "recover s",
           "passed")


def _reasons(dead: dict) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(dead.items())) or "0"


def _where(counts: dict) -> str:
    total = sum(counts.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{k} {v}" for k, v in counts.items() if v) + ")"


def row(result: dict) -> list[str]:
    if "error" in result:
        return [result["name"], "-", "-", "-", "-", "-", "-", "-", f"NO ({result['error'][:60]})"]
    if result["name"] == "hostile_input":
        dead = result["dead_lettered"]
        return [result["name"], str(result["uploaded"]), str(result["identified"]),
                f"{sum(dead.values())} + {result['refused']} refused", _where(result["lost"]),
                _where(result["duplicated"]), _where(result["redelivered"]), _fmt(result.get("recover_s")),
                "yes" if result["passed"] else "NO"]
    return [result["name"], str(result["uploaded"]), str(result["identified"]), _reasons(result["dead_lettered"]),
            _where(result["lost"]), _where(result["duplicated"]), _where(result["redelivered"]),
            _fmt(result.get("recover_s")), "yes" if result["passed"] else "NO"]


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: list[dict]) -> str:
    rows = [list(COLUMNS)] + [row(r) for r in results]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
