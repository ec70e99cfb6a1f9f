//! Reading a config document: serde's schema errors with the nearest known
//! name for an unknown field or variant, and the fields serde does not see
//! (next to a unit variant's `type`).

use super::config::ModelConfig;
use crate::{Error, Result};

/// Parses a config document: text that is not JSON is an [`Error::Json`];
/// JSON that does not fit the schema (an unknown or missing field, a wrong
/// type, a rule's stray parameter) an [`Error::Config`]. serde's message
/// for an unknown field or variant lists the expected names; the nearest
/// of them is added.
pub(super) fn parse_config(json: &str, context: &str) -> Result<ModelConfig> {
    let c = serde_json::from_str(json).map_err(|e| {
        if e.classify() != serde_json::error::Category::Data {
            return Error::Json {
                context: context.to_string(),
                source: e,
            };
        }
        let msg = e.to_string();
        let hint = unknown_name(&msg)
            .and_then(|(name, expected)| nearest(name, &expected))
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default();
        Error::Config(format!("{context}: {msg}{hint}"))
    })?;
    let extras = unit_variant_extras(json);
    if !extras.is_empty() {
        return Err(Error::Config(format!("{context}: {}", extras.join("; "))));
    }
    Ok(c)
}

/// Fields next to the `type` of a variant that has none (`{"type":
/// "encoder", "context_hidden": 48}`): serde reads internally tagged unit
/// variants without looking at the rest of the object, so these are found
/// here, in `kind`, every stream's `embedding` and `head`.
fn unit_variant_extras(json: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut errs = Vec::new();
    let mut check = |obj: Option<&serde_json::Value>, path: String, units: &[&str]| {
        let Some(map) = obj.and_then(|o| o.as_object()) else {
            return;
        };
        let Some(ty) = map.get("type").and_then(|t| t.as_str()) else {
            return;
        };
        if !units.contains(&ty) {
            return;
        }
        for k in map.keys().filter(|k| *k != "type") {
            errs.push(format!(
                "unknown field `{k}` in `{path}`: a `{ty}` takes no field but `type`"
            ));
        }
    };
    check(
        v.get("kind"),
        "kind".into(),
        &["encoder", "co_attention", "blip", "meter"],
    );
    check(v.get("head"), "head".into(), &["itm"]);
    if let Some(streams) = v.get("streams").and_then(|s| s.as_array()) {
        for (i, s) in streams.iter().enumerate() {
            check(
                s.get("embedding"),
                format!("streams[{i}].embedding"),
                &["none"],
            );
        }
    }
    errs
}

/// The name and the expected names of serde's "unknown field `x`, expected
/// one of `a`, `b`" (or "unknown variant ..."), if `msg` is that.
fn unknown_name(msg: &str) -> Option<(&str, Vec<&str>)> {
    let rest = msg
        .strip_prefix("unknown field `")
        .or_else(|| msg.strip_prefix("unknown variant `"))?;
    let (name, rest) = rest.split_once('`')?;
    // Backquoted names alternate with the text between them.
    let expected = rest.split('`').skip(1).step_by(2).collect();
    Some((name, expected))
}

/// The candidate nearest to `word` by edit distance (adjacent
/// transpositions count one), if it is near enough to be a likely typo:
/// at most a third of the longer name's length (and at least 1) away, or
/// `word` (3 letters or more) the start of it (`tau` for `tau_h`).
pub(crate) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| {
            *d <= (word.chars().count().max(c.chars().count()) / 3).max(1)
                || (word.len() >= 3 && c.starts_with(word))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance between `a` and `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, v) in d[0].iter_mut().enumerate() {
        *v = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::preset;

    /// `tiny-meter-full` as JSON, changed by `f`, parsed.
    fn parse_with(f: impl FnOnce(&mut serde_json::Value)) -> Result<ModelConfig> {
        let mut v: serde_json::Value =
            serde_json::from_str(&preset("tiny-meter-full").unwrap().to_json().unwrap()).unwrap();
        f(&mut v);
        ModelConfig::from_json(&v.to_string())
    }

    #[test]
    fn unknown_fields_are_refused_everywhere_with_the_nearest_name() {
        use serde_json::json;
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        // (change to the document, what the message names, the hint).
        let cases: Vec<(Edit, &str, Option<&str>)> = vec![
            (Box::new(|v| v["kinds"] = json!(1)), "`kinds`", Some("kind")),
            (
                Box::new(|v| v["kind"]["x"] = json!(1)),
                "`x` in `kind`",
                None,
            ),
            (
                Box::new(|v| v["head"]["lables"] = json!(3)),
                "`lables`",
                Some("labels"),
            ),
            (
                Box::new(|v| v["streams"][2]["hiden"] = json!(64)),
                "`hiden`",
                Some("hidden"),
            ),
            (
                Box::new(|v| v["streams"][0]["embedding"]["vocab"] = json!(64)),
                "`vocab`",
                Some("vocab_size"),
            ),
            (
                Box::new(|v| v["streams"][2]["embedding"]["type_vectr"] = json!(true)),
                "`type_vectr`",
                Some("type_vector"),
            ),
            (
                Box::new(|v| v["streams"][2]["layers"][0]["self_head_prunner"] = json!({})),
                "`self_head_prunner`",
                Some("self_head_pruner"),
            ),
            (
                Box::new(|v| v["streams"][2]["layers"][1]["self_head_pruner"]["tau"] = json!(0.5)),
                "`tau`",
                Some("tau_h"),
            ),
            (
                Box::new(|v| {
                    v["streams"][2]["layers"][1]["token_pruner"]["keep_frist"] = json!(true)
                }),
                "`keep_frist`",
                Some("keep_first"),
            ),
            (
                Box::new(|v| v["streams"][3]["layers"][1]["token_pruner"]["rho"] = json!(0.4)),
                "takes `tau`, not `rho`",
                None,
            ),
            (
                Box::new(|v| {
                    v["streams"][3]["layers"][1]["token_pruner"] =
                        json!({"rule": "budget", "rho": 0.5, "tau": 0.5})
                }),
                "takes `rho`, not `tau`",
                None,
            ),
            (
                Box::new(|v| {
                    v["streams"][3]["layers"][1]["token_pruner"] = json!({"rule": "budget"})
                }),
                "needs `rho`",
                None,
            ),
            (
                Box::new(|v| v["streams"][2]["activation"] = json!("quick_gleu")),
                "unknown variant `quick_gleu`",
                Some("quick_gelu"),
            ),
        ];
        for (f, needle, hint) in cases {
            let e = parse_with(f).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
            match hint {
                Some(h) => assert!(e.contains(&format!("did you mean `{h}`?")), "{e}"),
                None => assert!(!e.contains("did you mean"), "{e}"),
            }
        }
        // A unit variant's extra field, in a head.
        let mut v: serde_json::Value =
            serde_json::from_str(&preset("tiny-blip-full").unwrap().to_json().unwrap()).unwrap();
        v["head"]["labels"] = json!(2);
        let e = ModelConfig::from_json(&v.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `labels` in `head`"), "{e}");
        // And the good document still parses.
        assert_eq!(
            parse_with(|_| {}).unwrap(),
            preset("tiny-meter-full").unwrap()
        );
    }

    #[test]
    fn nearest_names() {
        assert_eq!(
            nearest("min_head", &["tau_h", "min_heads", "hidden"]),
            Some("min_heads")
        );
        assert_eq!(
            nearest("keep_frist", &["keep_first", "rule"]),
            Some("keep_first")
        );
        assert_eq!(nearest("zzz", &["kind", "streams", "head"]), None);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
