//! `smarttrim::report` pictures (CPU only, tiny presets): the keep map and
//! the FLOPs histogram in SVG and PNG, their titles and patch counts, bad
//! paths, and the demo's `--keep-map` / `--flops-hist` flags.

use std::path::Path;
use std::process::Command;

use smarttrim::reference::{forward, synthetic_inputs, ForwardOptions, Outputs};
use smarttrim::report::{
    flops_hist, flops_percent, keep_map, keep_map_scene, row_states, RowState, PATCH_GONE,
    PATCH_KEPT, PATCH_PRUNED,
};
use smarttrim::spec::{preset, ModelConfig, Weights};
use smarttrim::Error;

fn pass(name: &str, batch: usize, ragged: bool) -> (ModelConfig, Outputs) {
    let c = preset(name).unwrap();
    let w = Weights::random(&c, 3).unwrap();
    let inputs = synthetic_inputs(&c, batch, 5, ragged);
    let out = forward(&w, &inputs, &ForwardOptions { dense: false }).unwrap();
    (c, out)
}

fn hex(c: (u8, u8, u8)) -> String {
    format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2)
}

/// `<rect` elements of the SVG filled with one of the patch colours.
fn patch_rects(svg: &str) -> usize {
    let colours = [hex(PATCH_KEPT), hex(PATCH_PRUNED), hex(PATCH_GONE)];
    svg.split("<rect")
        .skip(1)
        .filter(|r| {
            let tag = &r[..r.find('>').unwrap_or(r.len())];
            colours.iter().any(|c| tag.contains(c.as_str()))
        })
        .count()
}

fn is_png(p: &Path) -> bool {
    let b = std::fs::read(p).unwrap();
    b.len() > 1000 && b.starts_with(b"\x89PNG\r\n\x1a\n")
}

fn pruning_layers(out: &Outputs, stream: usize) -> Vec<usize> {
    out.streams[stream]
        .layers
        .iter()
        .enumerate()
        .filter(|(_, r)| r.keep.is_some())
        .map(|(l, _)| l)
        .collect()
}

#[test]
fn keep_map_tiny_vit_svg_and_png() {
    let (c, out) = pass("tiny-vit", 3, false);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("keep.svg");
    keep_map(&c, &out, 1, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.len() > 2000, "{} bytes", text.len());
    assert!(text.starts_with("<svg"), "{}", &text[..80]);
    let layers = pruning_layers(&out, 0);
    assert_eq!(layers, vec![1, 2]);
    for &l in &layers {
        let r = &out.streams[0].layers[l];
        let title = format!("layer {l}: kept {}/{}", r.kept[1], r.rows_in[1]);
        assert!(text.contains(&title), "no `{title}` in the SVG");
    }
    // 32 px images, 8 px patches: a 4 x 4 grid per pruning layer.
    assert_eq!(patch_rects(&text), 16 * layers.len());
    assert!(text.contains("instance 1"));

    let png = dir.path().join("keep.png");
    keep_map(&c, &out, 1, &png).unwrap();
    assert!(is_png(&png));
}

#[test]
fn keep_map_tiny_meter_grid_and_tokens() {
    let (c, out) = pass("tiny-meter", 2, true);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("keep.svg");
    keep_map(&c, &out, 0, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    // The image stream gets 577 rows: CLS + a 24 x 24 grid per pruning layer.
    let image_layers = pruning_layers(&out, 1);
    assert_eq!(image_layers, vec![1, 2]);
    assert_eq!(patch_rects(&text), 576 * image_layers.len());
    for (si, s) in out.streams.iter().enumerate() {
        for l in pruning_layers(&out, si) {
            let r = &s.layers[l];
            let title = format!("layer {l}: kept {}/{}", r.kept[0], r.rows_in[0]);
            assert!(text.contains(&title), "no `{title}` for stream {si}");
        }
    }
    assert!(text.contains("stream `image`: image patches"));
    assert!(text.contains("stream `text`: tokens"));

    // The scene's token boxes: one per original text token per pruning layer.
    let scene = keep_map_scene(&c, &out, 0).unwrap();
    let n_text = out.streams[0].layers[0].rows_in[0] as usize;
    let token_boxes = scene
        .shapes
        .iter()
        .filter(|s| {
            matches!(s, smarttrim::report::Shape::Rect { fill, .. }
                if [smarttrim::report::TOKEN_KEPT, smarttrim::report::TOKEN_PRUNED,
                    smarttrim::report::TOKEN_GONE].contains(fill))
        })
        .count();
    assert_eq!(token_boxes, n_text * pruning_layers(&out, 0).len());

    let png = dir.path().join("keep.png");
    keep_map(&c, &out, 1, &png).unwrap();
    assert!(is_png(&png));
}

#[test]
fn row_states_follow_the_records() {
    let (_, out) = pass("tiny-meter", 3, true);
    for s in &out.streams {
        for b in 0..3 {
            let states = row_states(&s.layers, b);
            let mut alive = s.layers[0].rows_in[b] as usize;
            for (l, st, n, k) in states {
                assert_eq!(n, s.layers[l].rows_in[b] as usize);
                assert_eq!(k, s.layers[l].kept[b] as usize);
                let kept = st.iter().filter(|&&x| x == RowState::Kept).count();
                let pruned = st.iter().filter(|&&x| x == RowState::Pruned).count();
                assert_eq!(kept, k);
                assert_eq!(kept + pruned, n);
                assert!(n <= alive);
                alive = k;
            }
        }
    }
}

#[test]
fn flops_hist_svg_and_png() {
    let (c, out) = pass("tiny-meter", 16, true);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("hist.svg");
    flops_hist(&c, &out, &svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.len() > 1000);
    assert!(text.contains("per-instance FLOPs over a batch of 16"));
    let pct = flops_percent(&out);
    assert_eq!(pct.len(), 16);
    assert!(pct.iter().all(|&p| p > 0.0 && p <= 100.0 + 1e-9), "{pct:?}");
    let mean = pct.iter().sum::<f64>() / 16.0;
    assert!(text.contains(&format!("mean {mean:.1}%")));
    // One bar per non-empty bin: at least one, at most 16.
    let bars = text.matches(&hex((0x46, 0x82, 0xB4))).count();
    assert!((1..=16).contains(&bars), "{bars} bars");

    let png = dir.path().join("hist.png");
    flops_hist(&c, &out, &png).unwrap();
    assert!(is_png(&png));
}

#[test]
fn bad_paths_and_arguments_are_errors() {
    let (c, out) = pass("tiny-vit", 2, false);
    let dir = tempfile::tempdir().unwrap();
    for name in ["missing/keep.svg", "missing/keep.png"] {
        let p = dir.path().join(name);
        match keep_map(&c, &out, 0, &p) {
            Err(Error::Io { path, .. }) => assert_eq!(path, p),
            other => panic!("{name}: {other:?}"),
        }
        assert!(matches!(flops_hist(&c, &out, &p), Err(Error::Io { .. })));
    }
    let p = dir.path().join("keep.jpg");
    assert!(matches!(
        keep_map(&c, &out, 0, &p),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(!p.exists());
    let p = dir.path().join("keep.svg");
    assert!(matches!(
        keep_map(&c, &out, 2, &p),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn demo_flags_write_both_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("k.svg");
    let hist = dir.path().join("h.png");
    let out = Command::new(env!("CARGO_BIN_EXE_smarttrim"))
        .args([
            "demo",
            "--preset",
            "tiny-bert",
            "--device",
            "cpu",
            "--batch",
            "4",
        ])
        .args(["--ragged", "--instance", "2", "--keep-map"])
        .arg(&keep)
        .arg("--flops-hist")
        .arg(&hist)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("wrote"), "{err}");
    let svg = std::fs::read_to_string(&keep).unwrap();
    assert!(svg.contains("layer 1: kept"));
    assert!(svg.contains("instance 2"));
    assert_eq!(patch_rects(&svg), 0, "BERT has no patch grid");
    assert!(is_png(&hist));

    let out = Command::new(env!("CARGO_BIN_EXE_smarttrim"))
        .args(["demo", "--preset", "tiny-bert", "--device", "cpu"])
        .args(["--instance", "1", "--keep-map"])
        .arg(&keep)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--instance 1"));
}
