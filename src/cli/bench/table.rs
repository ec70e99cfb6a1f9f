//! The bench table on stdout and its number formats.

use super::{BenchArgs, Row};

/// Seconds as `1 h 05 min`, `3 min 20 s`, `4.2 s` or `35 ms`.
pub(super) fn duration(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{} h {:02} min",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

pub(super) fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.prec$}"))
}

pub(super) fn print_table(
    rows: &[Row],
    device: &str,
    commit: &str,
    sync: &str,
    args: &BenchArgs,
    torch: bool,
) -> anyhow::Result<()> {
    outln!(
        "smarttrim bench: device {device}, commit {commit}, sync {sync}, seed {}; times are \
         medians of {} forward passes after {} warm-up (p10/p90 in --json)",
        args.seed,
        args.iters,
        args.warmup
    )?;
    let mut head = vec![
        "workload",
        "batch",
        "schedule",
        "graph",
        "syncs/fwd",
        "FLOPs ratio",
        "dense ms",
        "pruned ms",
        "speedup",
        "efficiency",
    ];
    if torch {
        head.extend([
            "torch eager ms",
            "torch compile ms",
            "dense vs torch",
            "pruned vs torch",
        ]);
    }
    let mut cells: Vec<Vec<String>> = Vec::new();
    for r in rows {
        let mut c = vec![
            r.workload.clone(),
            r.batch.to_string(),
            r.schedule.clone(),
            if r.graph { "on" } else { "off" }.to_string(),
        ];
        if r.status != "ok" {
            c.push(format!(
                "unsupported: {}",
                r.note.as_deref().unwrap_or("the runtime cannot run this")
            ));
            cells.push(c);
            continue;
        }
        let ratio = match r.target_reachable {
            Some(false) => format!("{}*", opt(r.flops_ratio, 3)),
            _ => opt(r.flops_ratio, 3),
        };
        c.extend([
            r.syncs_per_forward.map_or("-".into(), |s| s.to_string()),
            ratio,
            opt(r.dense_ms, 3),
            opt(r.pruned_ms, 3),
            opt(r.speedup, 2),
            opt(r.efficiency, 2),
        ]);
        if torch {
            c.extend([
                opt(r.torch_dense_ms, 3),
                opt(r.torch_compile_dense_ms, 3),
                opt(r.dense_vs_torch, 2),
                opt(r.pruned_vs_torch, 2),
            ]);
        }
        cells.push(c);
    }
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for c in &cells {
        // An "unsupported" row's last cell spans the rest of the table.
        if c.len() < head.len() {
            for (i, x) in c.iter().take(c.len() - 1).enumerate() {
                width[i] = width[i].max(x.len());
            }
            continue;
        }
        for (i, x) in c.iter().enumerate() {
            width[i] = width[i].max(x.len());
        }
    }
    let line = |c: &[String]| -> String {
        let mut s = String::new();
        for (i, x) in c.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            if i == c.len() - 1 && c.len() < head.len() {
                s.push_str(x);
            } else if i < 4 {
                s.push_str(&format!("{x:<w$}", w = width[i]));
            } else {
                s.push_str(&format!("{x:>w$}", w = width[i]));
            }
        }
        s.trim_end().to_string()
    };
    let h: Vec<String> = head.iter().map(|s| s.to_string()).collect();
    outln!("{}", line(&h))?;
    for c in &cells {
        outln!("{}", line(c))?;
    }
    if rows.iter().any(|r| r.target_reachable == Some(false)) {
        outln!("* target FLOPs ratio not reachable on this model: the closest reachable ran")?;
    }
    outln!(
        "speedup = dense ms / pruned ms; efficiency = speedup x FLOPs ratio (1 = time falls with \
         model FLOPs){}",
        if torch {
            "; vs torch = the faster torch dense ms / ours"
        } else {
            ""
        }
    )?;
    Ok(())
}
