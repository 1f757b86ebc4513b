"""stage=inspect's files: data_health.md, a CSV per kind of finding, and PNG grids."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.data.config import SPLITS
from pipeline.data.health.duplicates import DuplicatePair
from pipeline.evaluation.health.findings import Findings

MD_ROWS = 10  # rows per table in data_health.md (it is also the run's description)


def _pair_rows(f: Findings, pairs: list[DuplicatePair]) -> list[str]:
    return [
        f"| {p.similarity:.3f} | {p.a.split} | `{f.short(p.a)}` | {p.b.split} | `{f.short(p.b)}` |"
        for p in pairs[:MD_ROWS]
    ]


def _more(shown: int, total: int, csv_name: str) -> list[str]:
    return [f"\n({total - shown} more in `{csv_name}`)"] if total > shown else []


def markdown(f: Findings) -> str:
    n = len(f.refs)
    sizes = {name: sum(f.class_counts[name].values()) for name in SPLITS}
    lines = [
        f"# Data health: {f.title}",
        "",
        f"{n} images, {len(f.class_names)} classes; "
        + ", ".join(f"{k} {v}" for k, v in sizes.items()),
        "",
        "## Class balance",
        "",
        "| class | " + " | ".join(SPLITS) + " |",
        "|---|" + "---:|" * len(SPLITS),
    ]
    lines += [
        f"| {c} | " + " | ".join(str(f.class_counts[s][c]) for s in SPLITS) + " |"
        for c in f.class_names[:30]
    ]
    if len(f.class_names) > 30:
        lines.append(f"\n({len(f.class_names) - 30} more classes in `class_counts.csv`)")
    cross, within = f.exact_counts["cross_split"], f.exact_counts["within_split"]
    lines += [
        "",
        "## Exact duplicates (identical file bytes or pixels)",
        "",
        f"**{cross}** val/test image(s) duplicate an image of an earlier split (leakage); "
        f"{within} extra copies within a split.",
    ]
    if f.exact:
        lines += ["", "| sim | split | image | split | image |", "|---:|---|---|---|---|"]
        lines += _pair_rows(f, f.exact) + _more(MD_ROWS, len(f.exact), "exact_duplicates.csv")
    near_cross = sum(p.cross_split for p in f.near)
    lines += [
        "",
        f"## Near-duplicates (backbone cosine >= {f.threshold})",
        "",
        f"**{len(f.near)}** pair(s) not identical in content, {near_cross} across splits; "
        f"the closest pair of all scores {f.closest:.3f}.",
    ]
    if f.near:
        lines += ["", "| cosine | split | image | split | image |", "|---:|---|---|---|---|"]
        lines += _pair_rows(f, f.near) + _more(MD_ROWS, len(f.near), "near_duplicates.csv")
    lines += ["", "## Label issues", ""]
    if f.labels is None:
        lines.append(f.label_note)
    else:
        issues = f.labels.issues
        lines += [
            f"**{len(issues)}** candidate(s) of {n} ({100 * len(issues) / n:.1f} %): {f.label_note}",
        ]
        if len(issues):
            lines += [
                "",
                "| split | image | given | suggested | p(given) |",
                "|---|---|---|---|---:|",
            ]
            for i in issues[:MD_ROWS]:
                ref = f.refs[i]
                suggested = f.class_names[f.labels.suggested[i]]
                lines.append(
                    f"| {ref.split} | `{f.short(ref)}` | {ref.label} | {suggested} | "
                    f"{f.labels.quality[i]:.3f} |"
                )
            lines += _more(MD_ROWS, len(issues), "label_issues.csv")
    lines += ["", "## Images", "", *_image_summary(f)]
    lines += [
        "",
        "## Cost",
        "",
        ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in f.seconds.items()),
        "",
    ]
    return "\n".join(lines)


def _image_summary(f: Findings) -> list[str]:
    widths = np.array([s.width for s in f.stats])
    heights = np.array([s.height for s in f.stats])
    aspect = widths / heights
    modes = _counts(s.mode for s in f.stats)
    formats = _counts(s.format for s in f.stats)
    flags = f.flag_counts()
    lines = [
        f"- width {widths.min()}..{widths.max()} px (median {np.median(widths):.0f}), "
        f"height {heights.min()}..{heights.max()} (median {np.median(heights):.0f}); "
        f"aspect w/h 5/50/95 %: {' / '.join(f'{q:.2f}' for q in np.percentile(aspect, [5, 50, 95]))}",
        f"- modes: {modes}; formats: {formats}",
        "- flagged: "
        + (", ".join(f"{k} {v}" for k, v in sorted(flags.items())) if flags else "none"),
    ]
    flagged = f.flagged()
    if flagged:
        lines += [
            "",
            "| split | image | flags | size | brightness | sharpness |",
            "|---|---|---|---|---:|---:|",
        ]
        for i in flagged[:MD_ROWS]:
            s = f.stats[i]
            lines.append(
                f"| {f.refs[i].split} | `{f.short(f.refs[i])}` | {', '.join(f.flags[i])} | "
                f"{s.width}x{s.height} {s.mode} {s.format} | {s.brightness:.0f} | {s.sharpness:.0f} |"
            )
        lines += _more(MD_ROWS, len(flagged), "image_flags.csv")
    return lines


def _counts(values) -> str:
    from collections import Counter

    return ", ".join(f"{k} {v}" for k, v in Counter(values).most_common())


def write_csvs(f: Findings, out_dir: Path) -> list[Path]:
    """Every flagged item, one CSV per check (full paths; the report shortens them)."""
    written = []

    def write(name: str, header: list[str], rows) -> None:
        path = out_dir / name
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        written.append(path)

    pair_header = [
        "similarity",
        "cross_split",
        "split_a",
        "image_a",
        "label_a",
        "split_b",
        "image_b",
        "label_b",
    ]

    def pair_rows(pairs):
        return (
            [
                f"{p.similarity:.4f}",
                p.cross_split,
                p.a.split,
                p.a.id,
                p.a.label,
                p.b.split,
                p.b.id,
                p.b.label,
            ]
            for p in pairs
        )

    write("exact_duplicates.csv", pair_header, pair_rows(f.exact))
    write("near_duplicates.csv", pair_header, pair_rows(f.near))
    if f.labels is not None:
        write(
            "label_issues.csv",
            ["rank", "split", "image", "given", "suggested", "p_given", "p_suggested"],
            (
                [
                    rank + 1,
                    f.refs[i].split,
                    f.refs[i].id,
                    f.refs[i].label,
                    f.class_names[f.labels.suggested[i]],
                    f"{f.labels.quality[i]:.4f}",
                    f"{f.labels.probs[i].max():.4f}",
                ]
                for rank, i in enumerate(f.labels.issues)
            ),
        )
    write(
        "image_flags.csv",
        [
            "split",
            "image",
            "label",
            "flags",
            "width",
            "height",
            "mode",
            "format",
            "frames",
            "brightness",
            "sharpness",
        ],
        (
            [
                f.refs[i].split,
                f.refs[i].id,
                f.refs[i].label,
                "; ".join(f.flags[i]),
                s.width,
                s.height,
                s.mode,
                s.format,
                s.frames,
                f"{s.brightness:.1f}",
                f"{s.sharpness:.1f}",
            ]
            for i in f.flagged()
            for s in (f.stats[i],)
        ),
    )
    write(
        "class_counts.csv",
        ["class", *SPLITS],
        ([c, *(f.class_counts[s][c] for s in SPLITS)] for c in f.class_names),
    )
    return written
