"""Draw the pictures of the README and the docs site from committed data, as plain SVG (no plotting library):

    docs/img/data-path.svg  the data path of a run, from DATA_PATH below (boxes, what flows between them, modules)
    docs/img/speed.svg      measured speed from bench/results/*.json: each bar beside its baseline from the same
                            run on the same machine, labelled with the device and the source file

    python tools/figures.py [--out docs/img]

The output is deterministic (no dates, fixed number formatting), so tests/project/test_docs.py regenerates both
files into a temporary folder and compares them with the committed ones: edit the data or this script, rerun it,
and commit the pictures with it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

SANS = "DejaVu Sans, Verdana, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
# advance widths per character in em, an upper bound for DejaVu Sans (wide) and its mono: used to check that every
# text fits its box, so a longer label fails loudly here instead of overflowing in the picture
EM_SANS, EM_SANS_BOLD, EM_MONO = 0.62, 0.68, 0.61
INK, MUTED, LINE = "#1f2328", "#57606a", "#8c959f"
OURS, BASE = "#3f51b5", "#9e9e9e"


def _num(x: float) -> str:
    """Coordinates with at most one decimal and no trailing zeros: the same bytes on every machine."""
    text = f"{x:.1f}"
    return text[:-2] if text.endswith(".0") else text


def text_width(text: str, size: float, font: str = SANS, bold: bool = False) -> float:
    em = EM_MONO if font == MONO else (EM_SANS_BOLD if bold else EM_SANS)
    return len(text) * size * em


class Svg:
    """A minimal SVG writer: elements in the order they are added, attributes in a fixed order."""

    def __init__(self, width: float, height: float, title: str):
        self.width, self.height, self.title = width, height, title
        self.items: list[str] = []

    def rect(self, x, y, w, h, fill, stroke="none", rx=0, title: str | None = None) -> None:
        tip = f"<title>{escape(title)}</title>" if title else ""
        self.items.append(f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(w)}" height="{_num(h)}" rx="{_num(rx)}" '
                          f'fill="{fill}" stroke="{stroke}">{tip}</rect>')

    def text(self, x, y, s: str, size=12, fill=INK, font=SANS, bold=False, anchor="start", italic=False) -> None:
        style = (' font-weight="bold"' if bold else "") + (' font-style="italic"' if italic else "")
        self.items.append(f'<text x="{_num(x)}" y="{_num(y)}" font-family="{font}" font-size="{_num(size)}" '
                          f'fill="{fill}" text-anchor="{anchor}"{style}>{escape(s)}</text>')

    def arrow(self, points: list[tuple[float, float]], label: str | None = None, at: tuple[float, float] | None = None,
              anchor: str = "middle") -> None:
        path = " ".join(f"{_num(x)},{_num(y)}" for x, y in points)
        self.items.append(f'<polyline points="{path}" fill="none" stroke="{LINE}" stroke-width="1.6" '
                          'marker-end="url(#head)"/>')
        if label:
            self.text(at[0], at[1], label, size=11, fill=MUTED, anchor=anchor, italic=True)

    def render(self) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_num(self.width)}" height="{_num(self.height)}" '
                f'viewBox="0 0 {_num(self.width)} {_num(self.height)}" role="img">\n'
                f"<title>{escape(self.title)}</title>\n"
                '<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
                f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{LINE}"/></marker></defs>\n'
                f'<rect x="0" y="0" width="{_num(self.width)}" height="{_num(self.height)}" fill="#ffffff"/>\n')
        return head + "\n".join(self.items) + "\n</svg>\n"


# --- the data path ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    title: str
    modules: tuple[str, ...]  # where it lives, under vmae_fast/
    lines: tuple[str, ...]  # what it does, a few words a line


# One shard's run, in order (both engines run it), then retrieval over what it wrote. The picture is a U: the first
# row goes left to right, the second comes back right to left.
DATA_PATH = (
    Stage("inputs", (), ("files, folders, list files", "(100M entries), http(s)://", "and s3:// URLs")),
    Stage("discovery", ("extraction/inputs.py",), ("this shard's entries only;", "committed ids skipped")),
    Stage("decode pool", ("video/pool.py",), ("worker processes decode", "only the frames clips need")),
    Stage("runner + model", ("extraction/core.py", "model.py, kernels/"), ("batches of kept tokens",
                                                                       "through Triton kernels")),
    Stage("writer", ("store/writer.py",), ("whole videos, one commit;", "signals wait for it")),
    Stage("OUT: Parquet parts", ("store/layout.py",), ("clips/, videos/, errors/", "atomic renames, resumable")),
    Stage("index", ("retrieval/index.py",), ("FAISS, tuned to a", "measured recall")),
    Stage("search", ("retrieval/search.py",), ("by clip, vector or", "video moment")),
)
FLOWS = ("entries", "tasks", "clips", "embeddings", "parts", "rows", "top k")

BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 200, 96, 64, 62, 24


def _box(svg: Svg, x: float, y: float, stage: Stage, fill: str) -> None:
    svg.rect(x, y, BOX_W, BOX_H, fill, stroke="#c5cae9", rx=8)
    svg.text(x + 12, y + 22, stage.title, size=14, bold=True)
    row = y + 22
    for module in stage.modules:
        row += 15
        svg.text(x + 12, row, module, size=11, fill=MUTED, font=MONO)
    row += 4
    for line in stage.lines:
        row += 15
        svg.text(x + 12, row, line, size=11)
    for s, size, font, bold in ([(stage.title, 14, SANS, True)] + [(m, 11, MONO, False) for m in stage.modules]
                                + [(line, 11, SANS, False) for line in stage.lines]):
        if text_width(s, size, font, bold) > BOX_W - 20:
            raise ValueError(f"{s!r} does not fit a {BOX_W} px box: shorten it")
    if row > y + BOX_H - 6:
        raise ValueError(f"stage {stage.title!r} has too many lines for a {BOX_H} px box")


def data_path_svg() -> str:
    cols = 4
    width = 2 * MARGIN + cols * BOX_W + (cols - 1) * GAP_X
    top = MARGIN + 26
    height = top + 2 * BOX_H + GAP_Y + MARGIN + 18
    svg = Svg(width, height, "The data path of vmae_fast: inputs, discovery, decode pool, runner and model, writer, "
                             "Parquet parts; retrieval on top")
    svg.text(MARGIN, MARGIN + 6, "One shard's run (the local and the Ray engine alike), then retrieval over what it "
             "wrote", size=13, fill=MUTED)

    def position(i: int) -> tuple[float, float]:
        col = i if i < cols else 2 * cols - 1 - i  # the second row runs right to left
        return MARGIN + col * (BOX_W + GAP_X), top + (0 if i < cols else BOX_H + GAP_Y)

    for i, stage in enumerate(DATA_PATH):
        x, y = position(i)
        _box(svg, x, y, stage, "#e8eaf6" if i < 5 else ("#eef6ee" if i == 5 else "#fff7e6"))
    for i, label in enumerate(FLOWS):
        (x0, y0), (x1, y1) = position(i), position(i + 1)
        if y0 == y1 and x1 > x0:  # first row, left to right: the label sits above the arrow
            mid = y0 + BOX_H / 2
            svg.arrow([(x0 + BOX_W, mid), (x1 - 2, mid)])
            _gap_label(svg, label, x0 + BOX_W + GAP_X / 2, mid - 8)
        elif y0 == y1:  # second row, right to left
            mid = y0 + BOX_H / 2
            svg.arrow([(x0, mid), (x1 + BOX_W + 2, mid)])
            _gap_label(svg, label, x1 + BOX_W + GAP_X / 2, mid - 8)
        else:  # down the right side
            cx = x0 + BOX_W / 2
            svg.arrow([(cx, y0 + BOX_H), (cx, y1 - 2)], label, (cx + 8, y0 + BOX_H + GAP_Y / 2 + 4), anchor="start")
    legend_y = height - MARGIN + 4
    svg.text(MARGIN, legend_y, "modules under vmae_fast/ in grey; decoding runs in worker processes, the rest in the "
             "shard's process (or a Ray actor)", size=11, fill=MUTED)
    return svg.render()


def _gap_label(svg: Svg, label: str, cx: float, y: float) -> None:
    """A flow's label above its arrow, centred on the gap between two boxes."""
    if text_width(label, 11) > GAP_X - 6:
        raise ValueError(f"flow label {label!r} does not fit a {GAP_X} px gap: shorten it")
    svg.text(cx, y, label, size=11, fill=MUTED, anchor="middle", italic=True)


# --- measured speed ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    path: tuple  # where the value sits in the source file (keys), so a test can read it back
    baseline: bool = False


@dataclass(frozen=True)
class Group:
    title: str
    unit: str
    source: str  # bench/results/<file>.json: every bar of a group comes from this one run
    device: str
    bars: tuple[Bar, ...]


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _at(data, path: tuple):
    for key in path:
        data = data[key]
    return data


def _bar(data: dict, label: str, path: tuple, baseline: bool = False) -> Bar:
    return Bar(label, float(_at(data, path)), path, baseline)


def speed_groups() -> list[Group]:
    """The comparisons drawn: each one run of one benchmark (providers alternating in it), ours beside the baseline
    it measured at equal work. No GPU figure exists yet."""
    groups = []

    name = "bench_cpu.json"
    d = _load(name)
    groups.append(Group(
        f"model forward: ViT-B 16x224, batch {d['batch']}, {d['dtype']}, all tokens", "clips/s", name,
        f"{d['cpu']} CPU, {d['cpu_count']} cores, torch {d['torch']}, transformers {d['transformers']}, "
        f"commit {d['git_commit']}",
        (_bar(d, "transformers SDPA", ("clips_per_s", "hf_sdpa"), baseline=True),
         _bar(d, "vmae_fast", ("clips_per_s", "vmae_fast_all")))))

    name = "bench_cpu_vjepa2.json"
    d = _load(name)
    commit = d["git_commit"][:7] + (" (dirty)" if d["git_commit"].endswith("-dirty") else "")
    groups.append(Group(
        f"model forward: V-JEPA 2 ViT-L {d['frames']}x{d['image_size']}, batch {d['batch']}, {d['dtype']}, all tokens",
        "clips/s", name,
        f"{d['cpu']} CPU, {d['cpu_count']} cores, shared, torch {d['torch']}, transformers "
        f"{d['transformers']}, commit {commit}",
        (_bar(d, "transformers SDPA", ("clips_per_s", "hf_sdpa"), baseline=True),
         _bar(d, "vmae_fast", ("clips_per_s", "vmae_fast_all")))))

    name = "docs-loop-cpu-after.json"
    d = _load(name)
    groups.append(Group(
        f"extract end to end: ViT-S 16x224, {d['clips']} clips of {len(d['videos'])} H.264 videos 360p-1080p, fp32",
        "clips/s", name,
        f"{d['device'].upper()}, {d['cores']} cores, torch {d['torch']}, transformers {d['transformers']}, "
        f"commit {d['commit']}",
        (_bar(d, "transformers-docs loop", ("clips_per_s", "docs"), baseline=True),
         _bar(d, "vmae-fast extract", ("clips_per_s", "extract")),
         _bar(d, "vmae-fast extract --workers 2", ("clips_per_s", "extract-w2")))))

    name = "decode-after.json"
    d = _load(name)
    bars = []
    for k, video in enumerate(d["videos"]):
        decord = max((case for case in video["cases"] if case.startswith("decord")),
                     key=lambda case: video["cases"][case]["clips_per_s"])
        bars.append(_bar(d, f"{video['height']}p: best decord ({decord.split()[1]})",
                         ("videos", k, "cases", decord, "clips_per_s"), baseline=True))
        bars.append(_bar(d, f"{video['height']}p: vmae_fast (PyAV)", ("videos", k, "cases", "ours auto",
                                                                      "clips_per_s")))
    groups.append(Group(
        f"decoding on one core: {d['sampling']['num_frames']} frames at step {d['sampling']['frame_step']}, "
        f"{d['image_size']} px crops, H.264 with B-frames", "clips/s", name,
        f"{d['cpu']}, {d['cpu_count']} cores (pinned to one), PyAV {d['versions']['av']}, decord "
        f"{d['versions']['decord']}, commit {d['commit']}", tuple(bars)))
    return groups


def _value(x: float) -> str:
    """Three significant digits, trailing zeros kept (13.0, 1.34, 0.398, 0.0125)."""
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:#.3g}"


def speed_svg(groups: list[Group] | None = None) -> str:
    groups = speed_groups() if groups is None else groups
    label_w, bar_w, value_w = 250, 460, 150
    width = 2 * MARGIN + label_w + bar_w + value_w
    bar_h, bar_gap, head_h, foot_h, group_gap = 20, 6, 22, 18, 22
    height = MARGIN + 46 + sum(head_h + len(g.bars) * (bar_h + bar_gap) + foot_h + group_gap for g in groups)
    svg = Svg(width, height, "Measured speed of vmae_fast against its baselines, CPU only")
    svg.text(MARGIN, MARGIN + 8, "Measured speed, CPU only: no GPU figure exists yet", size=15, bold=True)
    svg.text(MARGIN, MARGIN + 26, "each bar beside its baseline (grey) from the same run on the same machine; "
             "ratio = bar / baseline", size=11, fill=MUTED)
    y = MARGIN + 46
    for group in groups:
        svg.text(MARGIN, y + 14, group.title, size=13, bold=True)
        y += head_h
        top = max(bar.value for bar in group.bars)
        baseline = None
        for bar in group.bars:
            if bar.baseline:
                baseline = bar.value
            length = bar_w * bar.value / top
            svg.text(MARGIN + label_w - 8, y + 14, bar.label, size=12, anchor="end")
            if text_width(bar.label, 12) > label_w - 12:
                raise ValueError(f"bar label {bar.label!r} does not fit {label_w} px: shorten it")
            svg.rect(MARGIN + label_w, y, length, bar_h, BASE if bar.baseline else OURS,
                     title=f"{bar.label}: {bar.value:.3f} {group.unit} ({group.source})")
            ratio = "" if bar.baseline or baseline is None else f" = {bar.value / baseline:.2f}x"
            svg.text(MARGIN + label_w + length + 6, y + 14, f"{_value(bar.value)} {group.unit}{ratio}", size=12,
                     bold=not bar.baseline and bool(ratio))
            y += bar_h + bar_gap
        svg.text(MARGIN, y + 8, f"{group.device}; bench/results/{group.source}", size=10.5, fill=MUTED)
        if text_width(f"{group.device}; bench/results/{group.source}", 10.5) > width - 2 * MARGIN:
            raise ValueError(f"the source line of {group.title!r} does not fit: shorten it")
        y += foot_h + group_gap
    return svg.render()


FIGURES = {"data-path.svg": data_path_svg, "speed.svg": speed_svg}


def write_figures(out: Path) -> list[Path]:
    """Write every figure into `out`; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        path = out / name
        path.write_text(draw(), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="folder to write the SVGs into")
    args = parser.parse_args(argv)
    for path in write_figures(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
