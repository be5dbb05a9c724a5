//! The sidecar's modules depend one way: no module reaches, through `crate::` paths, a module that reaches it back.
//!
//! A module is a top-level `pub mod` of `src/lib.rs` with everything under
//! it (`foo.rs`, `foo/**`, and files it includes with `#[path]`); the crate
//! root (`lib.rs`) is one more module. Test code counts too: a test that
//! needs a module above its own is a sign the code under test sits too low.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the modules it names, each with the files that name it.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

const ROOT: &str = "crate";

#[test]
fn sidecar_modules_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(
        graph.len() > 20,
        "the module list was not read from lib.rs: {:?}",
        graph.keys()
    );
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "modules that import each other in a circle (a module may use only those below it; see docs/architecture.md, Layers):\n{}",
        describe(&graph, &cycles)
    );
}

#[test]
fn a_circle_is_found_and_named() {
    let mut graph = Graph::new();
    let mut edge = |from: &str, to: &str| {
        graph
            .entry(from.to_owned())
            .or_default()
            .entry(to.to_owned())
            .or_default()
            .insert(format!("src/{from}.rs"));
    };
    edge("handlers", "cache");
    edge("cache", "attempts");
    edge("attempts", "error");
    edge("error", "cache");
    edge("api", "pricing");
    let found = cycles(&graph);
    assert_eq!(
        found,
        vec![vec![
            "attempts".to_owned(),
            "cache".to_owned(),
            "error".to_owned()
        ]]
    );
    let text = describe(&graph, &found);
    assert!(text.contains("error → cache (src/error.rs)"), "{text}");
}

#[test]
fn references_are_read_from_paths_groups_and_nested_groups() {
    let text = "use crate::api::{Api, Usage};\n\
                use crate::{auth::Key, cache::{self, Entry}};\n\
                // crate::budget is only mentioned in a comment\n\
                let x = crate::pricing::cost(p, u); let y = llmesh_crds::config::X;\n\
                /// [`crate::limits`] in a doc comment\n";
    let names = referenced(text);
    let expected: BTreeSet<String> = ["api", "auth", "cache", "pricing"].map(str::to_owned).into();
    assert_eq!(names, expected);
}

/// The graph of the crate whose sources are in `src`.
fn module_graph(src: &Path) -> Graph {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod "))
        .filter_map(|rest| rest.strip_suffix(';'))
        .map(str::to_owned)
        .collect();
    let mut graph = Graph::new();
    let mut note = |module: &str, file: &Path| {
        let text = std::fs::read_to_string(file).expect("a source file");
        let shown = file
            .strip_prefix(src.parent().unwrap_or(src))
            .unwrap_or(file)
            .display()
            .to_string();
        let uses = graph.entry(module.to_owned()).or_default();
        for name in referenced(&text) {
            let target = if modules.contains(&name) {
                name
            } else {
                ROOT.to_owned()
            };
            if target != module {
                uses.entry(target).or_default().insert(shown.clone());
            }
        }
    };
    note(ROOT, &src.join("lib.rs"));
    for module in &modules {
        for file in files_of(src, module) {
            note(module, &file);
        }
    }
    graph
}

/// `src/<module>.rs`, everything under `src/<module>/`, and the files those
/// include with `#[path = "…"]`.
fn files_of(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = vec![src.join(format!("{module}.rs"))];
    let mut folders = vec![src.join(module)];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut included = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("#[path = \"") {
                let name = rest.split('"').next().unwrap_or_default();
                included.push(file.parent().unwrap_or(src).join(name));
            }
        }
    }
    files.extend(included);
    files.retain(|f| f.is_file());
    files.sort();
    files.dedup();
    files
}

/// The first segment of every `crate::` path in `text`, comments left out.
fn referenced(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let joined = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if joined {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            group_heads(group, &mut names);
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names.remove("self");
    names
}

/// The first segment of each item of a `{…}` group (after its `{`).
fn group_heads(group: &str, names: &mut BTreeSet<String>) {
    let mut depth = 0_usize;
    let mut item_start = true;
    let mut current = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if depth == 0 && item_start && (c.is_alphanumeric() || c == '_') => current.push(c),
            _ if depth == 0 && item_start && !current.is_empty() => {
                names.insert(std::mem::take(&mut current));
                item_start = false;
            }
            _ => {}
        }
    }
    if !current.is_empty() {
        names.insert(current);
    }
}

/// Every group of modules that reach each other (strongly connected
/// components of more than one module), each sorted, found by Tarjan's
/// algorithm.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        next: usize,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, node: &'g str) {
            self.index.insert(node, self.next);
            self.low.insert(node, self.next);
            self.next += 1;
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.graph.get(node).into_iter().flat_map(BTreeMap::keys) {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.push(member.to_owned());
                    if member == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        next: 0,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.found.sort();
    walk.found
}

/// Each circle's modules and the imports between them, with the files they are in.
fn describe(graph: &Graph, cycles: &[Vec<String>]) -> String {
    let mut text = String::new();
    for members in cycles {
        text.push_str(&format!("- {}\n", members.join(", ")));
        for from in members {
            for (to, files) in graph.get(from).into_iter().flatten() {
                if members.contains(to) {
                    let files: Vec<&str> = files.iter().map(String::as_str).collect();
                    text.push_str(&format!("    {from} → {to} ({})\n", files.join(", ")));
                }
            }
        }
    }
    text
}
