//! Pictures of a pruned forward pass: which tokens each layer kept, and how
//! the per-instance FLOPs spread over a batch (the SmartTrim paper's
//! token-trimming and FLOPs-histogram figures).
//!
//! Both pictures are drawn with `plotters` into SVG (`.svg`) or PNG (`.png`),
//! chosen by the path's extension. A picture is first built as a [`Scene`]
//! of rectangles, lines and text in pixel coordinates (pure, testable), then
//! painted by the backend and written atomically (a temporary file renamed
//! into place, [`crate::tensor_io::write_atomic`]), so a bad path or a full
//! disk is an [`Error::Io`] and nothing is left half written.
//!
//! Text in SVG needs no font (the viewer renders it). The PNG backend
//! rasterises text itself and needs a TrueType font: [`png_font`] looks for
//! one at run time (`SMARTTRIM_FONT`, then common DejaVu / Liberation paths);
//! when none is found a PNG is drawn without its text (the shapes are all
//! there) rather than failing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::backend::{BitMapBackend, DrawingBackend, SVGBackend};
use plotters::coord::Shift;
use plotters::prelude::{DrawingArea, IntoDrawingArea, PathElement, Rectangle};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontTransform, IntoFont, RGBColor, ShapeStyle, TextStyle};

use crate::reference::{LayerRecord, Outputs};
use crate::spec::{EmbeddingConfig, ModelConfig};
use crate::{Error, Result};

/// Kept image patch.
pub const PATCH_KEPT: (u8, u8, u8) = (0x46, 0x82, 0xB4);
/// Image patch pruned at this layer.
pub const PATCH_PRUNED: (u8, u8, u8) = (0xC8, 0xC8, 0xC8);
/// Image patch pruned at an earlier layer.
pub const PATCH_GONE: (u8, u8, u8) = (0xEC, 0xEC, 0xEC);
/// Kept text token.
pub const TOKEN_KEPT: (u8, u8, u8) = (0xE0, 0x8A, 0x2E);
/// Text token pruned at this layer.
pub const TOKEN_PRUNED: (u8, u8, u8) = (0xC9, 0xC9, 0xC9);
/// Text token pruned at an earlier layer.
pub const TOKEN_GONE: (u8, u8, u8) = (0xED, 0xED, 0xED);

const INK: (u8, u8, u8) = (0x20, 0x20, 0x20);
const BAR: (u8, u8, u8) = (0x46, 0x82, 0xB4);
const MEAN: (u8, u8, u8) = (0xC0, 0x30, 0x30);

/// How a text is placed relative to its point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The point is the text's left end (vertically centred).
    Left,
    /// The point is the text's centre.
    Center,
    /// The point is the text's right end (vertically centred).
    Right,
}

/// One drawing primitive, in pixels (origin top left).
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A filled rectangle `[x0, x1) x [y0, y1)`.
    Rect {
        /// Top-left corner.
        x0: i32,
        /// Top-left corner.
        y0: i32,
        /// Bottom-right corner.
        x1: i32,
        /// Bottom-right corner.
        y1: i32,
        /// Fill colour.
        fill: (u8, u8, u8),
    },
    /// A straight line.
    Line {
        /// Start.
        from: (i32, i32),
        /// End.
        to: (i32, i32),
        /// Colour.
        color: (u8, u8, u8),
        /// Width in pixels.
        width: u32,
    },
    /// A line of text.
    Text {
        /// The text.
        text: String,
        /// Anchor point.
        at: (i32, i32),
        /// Font size in pixels.
        size: f64,
        /// Placement relative to `at`.
        anchor: Anchor,
        /// Rotated 90 degrees counter-clockwise (a y-axis label).
        vertical: bool,
        /// Colour.
        color: (u8, u8, u8),
    },
}

/// A picture: its size and shapes, painted in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scene {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The shapes, back to front.
    pub shapes: Vec<Shape>,
}

impl Scene {
    fn rect(&mut self, x0: i32, y0: i32, x1: i32, y1: i32, fill: (u8, u8, u8)) {
        self.shapes.push(Shape::Rect {
            x0,
            y0,
            x1,
            y1,
            fill,
        });
    }
    fn line(&mut self, from: (i32, i32), to: (i32, i32), color: (u8, u8, u8), width: u32) {
        self.shapes.push(Shape::Line {
            from,
            to,
            color,
            width,
        });
    }
    fn text(&mut self, text: impl Into<String>, at: (i32, i32), size: f64, anchor: Anchor) {
        self.shapes.push(Shape::Text {
            text: text.into(),
            at,
            size,
            anchor,
            vertical: false,
            color: INK,
        });
    }
    /// All the text of the scene, one line per text shape.
    pub fn texts(&self) -> Vec<&str> {
        self.shapes
            .iter()
            .filter_map(|s| match s {
                Shape::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// The picture format, from a path's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.svg`.
    Svg,
    /// `.png`.
    Png,
}

impl Format {
    /// The format of `path` (`.svg` or `.png`, any case).
    pub fn of(path: &Path) -> Result<Format> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            _ => Err(Error::invalid(
                "report",
                format!(
                    "{}: the picture's extension must be .svg or .png",
                    path.display()
                ),
            )),
        }
    }
}

/// Font paths tried, in order, for PNG text (after `SMARTTRIM_FONT`).
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// The font PNG text is drawn with (found and registered once, on first
/// call): `$SMARTTRIM_FONT` if set, else the first of [`FONT_PATHS`] that
/// exists and parses. `None`: PNG pictures are drawn without text.
pub fn png_font() -> Option<&'static Path> {
    static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var_os("SMARTTRIM_FONT").map(PathBuf::from);
        env.into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .find(|p| {
                let Ok(bytes) = std::fs::read(p) else {
                    return false;
                };
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font(
                    "sans-serif",
                    plotters::style::FontStyle::Normal,
                    bytes,
                )
                .is_ok()
            })
    })
    .as_deref()
}

/// A generous estimate of a sans-serif text's width in pixels.
fn approx_width(text: &str, size: f64) -> i32 {
    (0.6 * size * text.chars().count() as f64).ceil() as i32
}

fn rgb(c: (u8, u8, u8)) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Plot(e.to_string())
}

fn paint<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, scene: &Scene, text: bool) -> Result<()>
where
    DB::ErrorType: 'static,
{
    area.fill(&plotters::style::WHITE).map_err(plot_err)?;
    for s in &scene.shapes {
        match s {
            Shape::Rect {
                x0,
                y0,
                x1,
                y1,
                fill,
            } => area
                .draw(&Rectangle::new(
                    [(*x0, *y0), (*x1, *y1)],
                    ShapeStyle::from(rgb(*fill)).filled(),
                ))
                .map_err(plot_err)?,
            Shape::Line {
                from,
                to,
                color,
                width,
            } => area
                .draw(&PathElement::new(
                    vec![*from, *to],
                    ShapeStyle::from(rgb(*color)).stroke_width(*width),
                ))
                .map_err(plot_err)?,
            Shape::Text {
                text: t,
                at,
                size,
                anchor,
                vertical,
                color,
            } => {
                if !text {
                    continue;
                }
                let h = match anchor {
                    Anchor::Left => HPos::Left,
                    Anchor::Center => HPos::Center,
                    Anchor::Right => HPos::Right,
                };
                let mut style: TextStyle = ("sans-serif", *size)
                    .into_font()
                    .color(&rgb(*color))
                    .pos(Pos::new(h, VPos::Center));
                if *vertical {
                    style = style.transform(FontTransform::Rotate270);
                }
                area.draw_text(t, &style, *at).map_err(plot_err)?;
            }
        }
    }
    area.present().map_err(plot_err)
}

/// Paints `scene` into `path` (`.svg` or `.png`).
pub fn render(scene: &Scene, path: &Path) -> Result<()> {
    let bytes = match Format::of(path)? {
        Format::Svg => {
            let mut s = String::new();
            {
                let area = SVGBackend::with_string(&mut s, (scene.width, scene.height))
                    .into_drawing_area();
                paint(&area, scene, true)?;
            }
            s.into_bytes()
        }
        Format::Png => {
            let (w, h) = (scene.width, scene.height);
            let mut buf = vec![0u8; w as usize * h as usize * 3];
            {
                let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
                paint(&area, scene, png_font().is_some())?;
            }
            let mut out = Vec::new();
            {
                let mut enc = png::Encoder::new(&mut out, w, h);
                enc.set_color(png::ColorType::Rgb);
                enc.set_depth(png::BitDepth::Eight);
                let mut wr = enc.write_header().map_err(plot_err)?;
                wr.write_image_data(&buf).map_err(plot_err)?;
                wr.finish().map_err(plot_err)?;
            }
            out
        }
    };
    crate::tensor_io::write_atomic(path, &bytes)
}

/// Whether stream `si` is drawn as an image-patch grid: a ViT stream, or a
/// stream without embedding named like an image (`image`, `vision`) whose
/// first sequence is CLS plus a square number of patches. Returns the grid
/// side.
pub fn patch_grid(config: &ModelConfig, si: usize, rows: usize) -> Option<usize> {
    let s = config.streams.get(si)?;
    let imageish = match s.embedding {
        EmbeddingConfig::Vit { .. } => true,
        EmbeddingConfig::None | EmbeddingConfig::Transform { .. } => {
            let n = s.name.to_ascii_lowercase();
            n.contains("image") || n.contains("vis")
        }
        EmbeddingConfig::Bert { .. } => false,
    };
    let p = rows.checked_sub(1)?;
    let g = (p as f64).sqrt().round() as usize;
    (imageish && g > 0 && g * g == p).then_some(g)
}

/// State of one original row at one layer, for one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    /// Entered the layer and was kept.
    Kept,
    /// Entered the layer and was pruned there.
    Pruned,
    /// Pruned at an earlier layer.
    Gone,
}

/// One pruning layer of one stream for one sequence: `(layer, states by
/// original position, rows entering, rows kept)`.
pub type LayerStates = (usize, Vec<RowState>, usize, usize);

/// The per-original-row states of sequence `b` at every layer of a stream
/// where a token pruner ran. `n0` is the sequence's length entering layer 0.
pub fn row_states(layers: &[LayerRecord], b: usize) -> Vec<LayerStates> {
    let n0 = layers.first().map_or(0, |r| r.rows_in[b].max(0) as usize);
    layers
        .iter()
        .enumerate()
        .filter_map(|(l, r)| {
            let keep = r.keep.as_ref()?;
            let off: usize = r.rows_in[..b].iter().map(|&x| x.max(0) as usize).sum();
            let n = r.rows_in[b].max(0) as usize;
            let mut st = vec![RowState::Gone; n0];
            let rows = r.orig_index_in[off..off + n]
                .iter()
                .zip(&keep[off..off + n]);
            for (&o, &k) in rows {
                let o = o.max(0) as usize;
                if o < n0 {
                    st[o] = if k { RowState::Kept } else { RowState::Pruned };
                }
            }
            Some((l, st, n, r.kept[b].max(0) as usize))
        })
        .collect()
}

fn check_instance(outputs: &Outputs, instance: usize) -> Result<usize> {
    let batch = outputs.flops.len();
    if instance >= batch {
        return Err(Error::invalid(
            "report",
            format!("instance {instance} is out of range: the batch has {batch} sequence(s)"),
        ));
    }
    if outputs.streams.iter().any(|s| s.layers.is_empty()) {
        return Err(Error::invalid("report", "a stream has no layers"));
    }
    Ok(batch)
}

/// The keep-map picture of sequence `instance` (see [`keep_map`]).
pub fn keep_map_scene(config: &ModelConfig, outputs: &Outputs, instance: usize) -> Result<Scene> {
    check_instance(outputs, instance)?;
    const GAP: i32 = 28;
    const MARGIN: i32 = 20;
    const TOKEN_W: i32 = 12;
    const TOKEN_H: i32 = 14;
    const LABEL_W: i32 = 200;
    let mut scene = Scene::default();
    let mut y = MARGIN;
    let mut width = 0i32;
    let mut header: Vec<String> = Vec::new();
    // Grids first (images), then token rows (text), each in config order.
    let mut order: Vec<(usize, Option<usize>)> = outputs
        .streams
        .iter()
        .enumerate()
        .map(|(si, s)| {
            let n0 = s.layers[0].rows_in[instance].max(0) as usize;
            (si, patch_grid(config, si, n0))
        })
        .collect();
    order.sort_by_key(|&(si, g)| (g.is_none(), si));
    let title_y = y + 8;
    y += 30;
    for &(si, grid) in &order {
        let s = &outputs.streams[si];
        let n0 = s.layers[0].rows_in[instance].max(0) as usize;
        let mut states = row_states(&s.layers, instance);
        if states.is_empty() {
            // No token pruner in this stream: one panel, everything kept.
            states.push((usize::MAX, vec![RowState::Kept; n0], n0, n0));
        }
        let caption = |l: usize, n: usize, k: usize| {
            if l == usize::MAX {
                format!("no token pruner: kept {k}/{n}")
            } else {
                format!("layer {l}: kept {k}/{n}")
            }
        };
        match grid {
            Some(g) => {
                header.push(format!("{} ({g}x{g} patches + CLS)", s.name));
                scene.text(
                    format!("stream `{}`: image patches", s.name),
                    (MARGIN, y + 6),
                    15.0,
                    Anchor::Left,
                );
                y += 24;
                // About 192 px a grid (8 px cells at 24 x 24), cells 6 to 24 px.
                let cell = (192 / g as i32).clamp(6, 24);
                let side = g as i32 * cell;
                // Wide enough for the longest caption too.
                let panel = states
                    .iter()
                    .map(|(l, _, n, k)| approx_width(&caption(*l, *n, *k), 13.0))
                    .fold(side, i32::max);
                for (j, (l, st, n, k)) in states.iter().enumerate() {
                    let x0 = MARGIN + j as i32 * (panel + GAP) + (panel - side) / 2;
                    scene.text(
                        caption(*l, *n, *k),
                        (x0 + side / 2, y + 6),
                        13.0,
                        Anchor::Center,
                    );
                    let gy = y + 18;
                    for p in 0..g * g {
                        let fill = match st.get(p + 1).copied().unwrap_or(RowState::Gone) {
                            RowState::Kept => PATCH_KEPT,
                            RowState::Pruned => PATCH_PRUNED,
                            RowState::Gone => PATCH_GONE,
                        };
                        let (r, c) = ((p / g) as i32, (p % g) as i32);
                        let (px, py) = (x0 + c * cell, gy + r * cell);
                        scene.rect(px, py, px + cell - 1, py + cell - 1, fill);
                    }
                    width = width.max(MARGIN + (j as i32 + 1) * (panel + GAP) - GAP);
                }
                y += 18 + side + 30;
            }
            None => {
                header.push(format!("{} ({n0} tokens)", s.name));
                scene.text(
                    format!("stream `{}`: tokens (position along x)", s.name),
                    (MARGIN, y + 6),
                    15.0,
                    Anchor::Left,
                );
                y += 24;
                for (l, st, n, k) in &states {
                    scene.text(
                        caption(*l, *n, *k),
                        (MARGIN, y + TOKEN_H / 2),
                        13.0,
                        Anchor::Left,
                    );
                    for (t, state) in st.iter().enumerate() {
                        let fill = match state {
                            RowState::Kept => TOKEN_KEPT,
                            RowState::Pruned => TOKEN_PRUNED,
                            RowState::Gone => TOKEN_GONE,
                        };
                        let px = MARGIN + LABEL_W + t as i32 * TOKEN_W;
                        scene.rect(px, y, px + TOKEN_W - 2, y + TOKEN_H, fill);
                    }
                    width = width.max(MARGIN + LABEL_W + st.len() as i32 * TOKEN_W);
                    y += TOKEN_H + 6;
                }
                y += 24;
            }
        }
    }
    // Legend.
    let mut lx = MARGIN;
    let has_grid = order.iter().any(|o| o.1.is_some());
    let has_tokens = order.iter().any(|o| o.1.is_none());
    let mut legend: Vec<((u8, u8, u8), &str)> = Vec::new();
    if has_grid {
        legend.push((PATCH_KEPT, "patch kept"));
    }
    if has_tokens {
        legend.push((TOKEN_KEPT, "token kept"));
    }
    legend.push((PATCH_PRUNED, "pruned at this layer"));
    legend.push((PATCH_GONE, "pruned earlier"));
    for (c, name) in legend {
        // Outlined swatches; their fill differs from the cells' in the lowest
        // red bit, so that counting cells by colour never counts them.
        scene.rect(lx, y - 6, lx + 13, y + 7, INK);
        scene.rect(lx + 1, y - 5, lx + 12, y + 6, (c.0 ^ 1, c.1, c.2));
        scene.text(name, (lx + 20, y), 13.0, Anchor::Left);
        lx += 40 + approx_width(name, 13.0);
    }
    width = width.max(lx);
    y += 22;
    let note = format!(
        "layers are counted from 0, as in the demo's table; N counts the rows entering \
         the layer{}",
        if has_grid {
            " (an image's CLS included)"
        } else {
            ""
        }
    );
    width = width.max(MARGIN + approx_width(&note, 13.0));
    scene.text(note, (MARGIN, y), 13.0, Anchor::Left);
    y += 20;
    let title = format!("token keep map, instance {instance}: {}", header.join(", "));
    width = width.max(MARGIN + approx_width(&title, 15.0));
    scene.text(title, (MARGIN, title_y), 15.0, Anchor::Left);
    scene.width = (width + MARGIN) as u32;
    scene.height = y as u32;
    Ok(scene)
}

/// Draws which rows sequence `instance` kept at every pruning layer: per
/// image-like stream (see [`patch_grid`]) one `sqrt(P) x sqrt(P)` patch grid
/// per layer (patch `p` is the row of `orig_index` `p + 1`; row 0 is CLS),
/// titled `layer L: kept K/N`; per text-like stream one row of boxes per
/// layer, token position along x. Kept rows are coloured, rows pruned at the
/// layer grey, rows pruned earlier light grey. Writes `.svg` or `.png`.
pub fn keep_map(
    config: &ModelConfig,
    outputs: &Outputs,
    instance: usize,
    path: &Path,
) -> Result<()> {
    render(&keep_map_scene(config, outputs, instance)?, path)
}

/// Per-instance model FLOPs of `outputs` as a percentage of the dense pass.
pub fn flops_percent(outputs: &Outputs) -> Vec<f64> {
    outputs
        .flops
        .iter()
        .map(|f| 100.0 * f.pruned.model as f64 / f.dense.model.max(1) as f64)
        .collect()
}

/// Bin width and first edge for `values`: the smallest "nice" width giving
/// at most 20 bins.
fn bins(values: &[f64]) -> (f64, f64, usize) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w = [0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 20.0, 25.0, 50.0]
        .into_iter()
        .find(|w| ((hi / w).floor() - (lo / w).floor()) < 20.0)
        .unwrap_or(100.0);
    let start = (lo / w).floor() * w;
    let n = (((hi - start) / w).floor() as usize + 1).max(1);
    (w, start, n)
}

/// The FLOPs-histogram picture (see [`flops_hist`]).
pub fn flops_hist_scene(_config: &ModelConfig, outputs: &Outputs) -> Result<Scene> {
    if outputs.flops.is_empty() {
        return Err(Error::invalid("report", "no sequences: the batch is empty"));
    }
    let pct = flops_percent(outputs);
    let (w, start, nb) = bins(&pct);
    let mut counts = vec![0usize; nb];
    for &p in &pct {
        counts[(((p - start) / w).floor() as usize).min(nb - 1)] += 1;
    }
    let maxc = *counts.iter().max().unwrap_or(&1);
    let mean = pct.iter().sum::<f64>() / pct.len() as f64;
    let lo = pct.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = pct.iter().copied().fold(f64::NEG_INFINITY, f64::max);

    let (width, height) = (720i32, 440i32);
    let (left, right, top, bottom) = (70i32, 30i32, 60i32, 60i32);
    let (pw, ph) = (width - left - right, height - top - bottom);
    let x_of = |v: f64| left + ((v - start) / (w * nb as f64) * pw as f64).round() as i32;
    // y axis: a nice step giving at most 10 ticks.
    let ystep = [1usize, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000]
        .into_iter()
        .find(|s| maxc.div_ceil(*s) <= 10)
        .unwrap_or(maxc.max(1));
    let ymax = maxc.div_ceil(ystep).max(1) * ystep;
    let y_of = |c: f64| top + ph - (c / ymax as f64 * ph as f64).round() as i32;

    let mut scene = Scene {
        width: width as u32,
        height: height as u32,
        shapes: Vec::new(),
    };
    scene.text(
        format!(
            "per-instance FLOPs over a batch of {}: mean {mean:.1}% of dense (min {lo:.1}%, max {hi:.1}%)",
            pct.len()
        ),
        (width / 2, 22),
        15.0,
        Anchor::Center,
    );
    // Grid lines and y ticks.
    for k in 0..=ymax / ystep {
        let c = k * ystep;
        let yy = y_of(c as f64);
        scene.line((left, yy), (left + pw, yy), (0xE4, 0xE4, 0xE4), 1);
        scene.text(c.to_string(), (left - 8, yy), 12.0, Anchor::Right);
    }
    // Bars.
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let x0 = x_of(start + i as f64 * w);
        let x1 = x_of(start + (i + 1) as f64 * w);
        scene.rect(x0 + 1, y_of(c as f64), x1 - 1, top + ph, BAR);
    }
    // Axes and x ticks (at most 10 labels).
    scene.line((left, top + ph), (left + pw, top + ph), INK, 1);
    scene.line((left, top), (left, top + ph), INK, 1);
    let every = nb.div_ceil(10).max(1);
    for i in (0..=nb).step_by(every) {
        let v = start + i as f64 * w;
        let xx = x_of(v);
        scene.line((xx, top + ph), (xx, top + ph + 5), INK, 1);
        let label = if w.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        };
        scene.text(label, (xx, top + ph + 16), 12.0, Anchor::Center);
    }
    // Mean.
    let xm = x_of(mean);
    scene.line((xm, top), (xm, top + ph), MEAN, 2);
    scene.shapes.push(Shape::Text {
        text: format!("mean {mean:.1}%"),
        at: (xm, top - 12),
        size: 13.0,
        anchor: Anchor::Center,
        vertical: false,
        color: MEAN,
    });
    scene.text(
        "model FLOPs of the instance (% of the dense pass)",
        (left + pw / 2, height - 16),
        13.0,
        Anchor::Center,
    );
    scene.shapes.push(Shape::Text {
        text: "instances".into(),
        at: (20, top + ph / 2),
        size: 13.0,
        anchor: Anchor::Center,
        vertical: true,
        color: INK,
    });
    Ok(scene)
}

/// Draws the histogram of per-instance model FLOPs, as a percentage of the
/// dense pass, over the batch of `outputs` (the SmartTrim paper's VQA FLOPs
/// histogram), with the mean marked. Writes `.svg` or `.png`.
pub fn flops_hist(config: &ModelConfig, outputs: &Outputs, path: &Path) -> Result<()> {
    render(&flops_hist_scene(config, outputs)?, path)
}
