//! `TypedStore` keeps offering every public operation of `Store` (issue 16:
//! "and keeps doing so as batches, conditional writes, events and backup
//! arrive"). This test reads the sources: a new `pub fn` in an `impl Store`
//! block fails it until `TypedStore` has a method of the same name, or the
//! list below says why it has none.

use std::collections::BTreeSet;
use std::path::Path;

/// `Store` methods with no typed counterpart, and why.
const NOT_TYPED: &[(&str, &str)] = &[
    (
        "check_invariants",
        "a test seam of the byte store (reach it through raw())",
    ),
    (
        "sweep_expired_now",
        "a test seam of the byte store: one pass of active expiry (reach it through raw())",
    ),
];

/// Names of the `pub fn`s declared directly in `impl <ty> {` / `impl<..> <ty><..> {`
/// blocks of `source`.
fn pub_fns_of(source: &str, impl_head: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut depth: Option<i32> = None;
    for line in source.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        match depth {
            None => {
                if code.starts_with(impl_head) && !code.contains(" for ") {
                    depth = Some(0);
                } else {
                    continue;
                }
            }
            Some(1) => {
                if let Some(rest) = code.strip_prefix("pub fn ") {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    names.insert(name);
                }
            }
            Some(_) => {}
        }
        let d = depth.as_mut().unwrap();
        *d += code.matches('{').count() as i32 - code.matches('}').count() as i32;
        if *d <= 0 && code.contains('}') {
            depth = None;
        }
    }
    names
}

fn sources(paths: &[&Path]) -> String {
    let mut all = String::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|f| f.extension().is_some_and(|x| x == "rs"))
                .collect();
            files.sort();
            for f in files {
                all += &std::fs::read_to_string(f).unwrap();
                all.push('\n');
            }
        } else if p.exists() {
            all += &std::fs::read_to_string(p).unwrap();
            all.push('\n');
        }
    }
    all
}

#[test]
fn typed_store_offers_every_operation_of_store() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = pub_fns_of(
        &sources(&[&root.join("src/store.rs"), &root.join("src/store")]),
        "impl Store {",
    );
    let typed = pub_fns_of(
        &sources(&[&root.join("src/typed.rs"), &root.join("src/typed")]),
        "impl<K, V> TypedStore<K, V>",
    );
    // The parser found the blocks at all.
    for name in ["put", "get", "touch", "compact", "close"] {
        assert!(store.contains(name), "Store::{name} not found in {store:?}");
        assert!(
            typed.contains(name),
            "TypedStore::{name} not found in {typed:?}"
        );
    }
    let exempt: BTreeSet<&str> = NOT_TYPED.iter().map(|(n, _)| *n).collect();
    let missing: Vec<&String> = store
        .iter()
        .filter(|n| !typed.contains(*n) && !exempt.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "Store has operations TypedStore lacks: {missing:?}. Add them to src/typed.rs \
         (keys as `&Q where K: Borrow<Q>`), or list them in NOT_TYPED with the reason"
    );
    for (name, _) in NOT_TYPED {
        assert!(
            store.contains(*name),
            "NOT_TYPED lists {name}, which Store no longer has"
        );
    }
}
