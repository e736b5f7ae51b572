//! The crate layering of `docs/architecture.md`, checked against the resolved dependency graph.
//!
//! One `cargo metadata` call gives the workspace's resolved graph (normal and build dependencies;
//! dev-dependencies do not ship and are ignored). For every workspace crate the rules in
//! [`RULES`] say which workspace crates it may depend on directly (the arrows of the diagram),
//! which crates it must never reach, directly or through anything else, and for the leaf crates
//! the complete list of crates they may reach at all. A workspace crate without a rule is itself
//! a violation, so a new crate has to be placed in the layering before it lands. Every message
//! names the crate, the dependency and the path through which it is reached.
//!
//! Tracy: in the default build no library reaches `tracy-client`; the crates with a `tracy`
//! feature (off by default) are the only ones that may depend on it, which a second resolution
//! with `sample-mmo/tracy` on checks. When a rule changes, change `docs/architecture.md` with
//! it.

#![allow(missing_docs)]

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// What one workspace crate may and may not depend on. Lists are space-separated crate names.
struct Rule {
    /// The package name.
    krate: &'static str,
    /// Workspace crates it may depend on directly (the arrows); `None`: any.
    may_use: Option<&'static str>,
    /// Crates it must not reach, directly or transitively.
    forbidden: &'static [&'static str],
    /// If set, every crate it reaches must be in this list.
    only: Option<&'static str>,
}

const fn rule(krate: &'static str, may_use: &'static str, forbidden: &'static [&str]) -> Rule {
    let may_use = Some(may_use);
    Rule {
        krate,
        may_use,
        forbidden,
        only: None,
    }
}

impl Rule {
    const fn only(self, only: &'static str) -> Rule {
        Rule {
            only: Some(only),
            ..self
        }
    }
}

/// Only binaries pick the allocator, install Tracy and parse flags (libraries may be
/// instrumented for Tracy only behind an off-by-default `tracy` feature: [`TRACY_FEATURES`]).
const BIN_ONLY: &str = "mimalloc tracy-client clap";
/// What no client-side crate may reach (client, FFI, CLI, load test, profiler).
const NOT_CLIENT: &str = "orrery-engine orrery-subscription orrery-server bevy_ecs sqlparser";
/// Everything `orrery-row` may reach: serde, serde_json, glam, thiserror and what they pull in
/// today, and smallvec (no dependencies; a client's row keeps its quantized units inline with
/// it). Grow it deliberately: every client links this crate.
const ROW_ALLOWED: &str = "serde serde_core serde_derive serde_json glam thiserror \
    thiserror-impl proc-macro2 quote syn unicode-ident itoa memchr ryu zmij smallvec";
const MACROS_ALLOWED: &str = "proc-macro2 quote syn unicode-ident";
const ENGINE_FORBIDDEN: &str = "orrery-netcode orrery-server orrery-client orrery-subscription \
    tokio axum hyper sqlparser renet";
const SUBSCRIPTION_FORBIDDEN: &str = "orrery-netcode orrery-server orrery-client tokio axum hyper";
const NETCODE_FORBIDDEN: &str = "orrery-engine orrery-subscription orrery-server bevy_ecs axum";
const LEAF_FORBIDDEN: &str = "bevy_ecs tokio";
const CLIENT_SIDE: &str = "orrery-client orrery-netcode orrery-row";

#[rustfmt::skip]
const RULES: &[Rule] = &[
    // crate, the workspace crates it may depend on directly, what it must never reach
    rule("orrery-row", "", &[]).only(ROW_ALLOWED),
    rule("orrery-tick", "", &[LEAF_FORBIDDEN, BIN_ONLY]),
    rule("orrery-spatial", "", &[LEAF_FORBIDDEN, BIN_ONLY]),
    rule("orrery-macros", "", &[]).only(MACROS_ALLOWED),
    rule("orrery-engine", "orrery-row orrery-tick orrery-spatial orrery-macros",
        &[ENGINE_FORBIDDEN, BIN_ONLY]),
    rule("orrery-subscription", "orrery-engine orrery-row orrery-spatial orrery-tick",
        &[SUBSCRIPTION_FORBIDDEN, BIN_ONLY]),
    rule("orrery-netcode", "orrery-row", &[NETCODE_FORBIDDEN, BIN_ONLY]),
    // The server library may use clap: it offers `ServerArgs` (a `clap::Args`) to binaries.
    rule("orrery-server", "orrery-engine orrery-subscription orrery-netcode orrery-row orrery-tick",
        &["orrery-client mimalloc tracy-client"]),
    rule("orrery-client", "orrery-netcode orrery-row", &[NOT_CLIENT, BIN_ONLY]),
    rule("orrery-client-ffi", "orrery-client", &[NOT_CLIENT, BIN_ONLY]),
    // Binaries: they may pick the allocator, install Tracy and parse flags.
    rule("orrery-cli", CLIENT_SIDE, &[NOT_CLIENT]),
    rule("load-test", CLIENT_SIDE, &[NOT_CLIENT]),
    rule("orrery-profiler", "orrery-client orrery-netcode orrery-row orrery-tick", &[NOT_CLIENT]),
    rule("sample-mmo", "orrery-server orrery-engine", &[]),
    Rule { may_use: None, ..rule("orrery-integration-tests", "", &[]) }, // may use anything
];

fn listed(list: &str, name: &str) -> bool {
    list.split_whitespace().any(|w| w == name)
}

/// A resolved dependency graph: one node per package (two versions of a crate are two nodes).
#[derive(Default)]
struct Graph {
    nodes: Vec<Node>,
    by_id: BTreeMap<String, usize>,
}

struct Node {
    name: String,
    version: String,
    workspace: bool,
    deps: Vec<usize>,
}

impl Graph {
    fn node(&mut self, id: &str, name: &str, version: &str) -> usize {
        if let Some(&i) = self.by_id.get(id) {
            return i;
        }
        let (name, version) = (name.to_owned(), version.to_owned());
        self.nodes.push(Node {
            name,
            version,
            workspace: false,
            deps: Vec::new(),
        });
        self.by_id.insert(id.to_owned(), self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    /// A synthetic graph: crates named by their name, `workspace` ones marked as members.
    fn from_edges(workspace: &[&str], edges: &[(&str, &str)]) -> Graph {
        let mut g = Graph::default();
        for (from, to) in edges {
            let (a, b) = (g.node(from, from, "0.0.0"), g.node(to, to, "0.0.0"));
            g.nodes[a].deps.push(b);
        }
        for w in workspace {
            let i = g.node(w, w, "0.0.0");
            g.nodes[i].workspace = true;
        }
        g
    }

    /// The graph of `cargo metadata --format-version 1` output.
    fn from_metadata(meta: &Value) -> Graph {
        let mut g = Graph::default();
        for p in meta["packages"].as_array().expect("packages") {
            let s = |k: &str| p[k].as_str().unwrap_or_else(|| panic!("package {k}"));
            g.node(s("id"), s("name"), s("version"));
        }
        for m in meta["workspace_members"]
            .as_array()
            .expect("workspace_members")
        {
            let i = g.by_id[m.as_str().expect("member id")];
            g.nodes[i].workspace = true;
        }
        for n in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
            let from = g.by_id[n["id"].as_str().expect("node id")];
            for d in n["deps"].as_array().expect("node deps") {
                // `kind` is null for normal dependencies, "build" or "dev" otherwise.
                let ships = d["dep_kinds"]
                    .as_array()
                    .expect("dep_kinds")
                    .iter()
                    .any(|k| k["kind"].is_null() || k["kind"] == "build");
                if ships {
                    let to = g.by_id[d["pkg"].as_str().expect("dep pkg")];
                    g.nodes[from].deps.push(to);
                }
            }
        }
        g
    }

    /// Every node reachable from `root`, with its predecessor on a shortest path.
    fn reach(&self, root: usize) -> Vec<Option<usize>> {
        let mut parent = vec![None; self.nodes.len()];
        let mut queue = VecDeque::from([root]);
        parent[root] = Some(root);
        while let Some(i) = queue.pop_front() {
            for &d in &self.nodes[i].deps {
                if parent[d].is_none() {
                    parent[d] = Some(i);
                    queue.push_back(d);
                }
            }
        }
        parent[root] = None;
        parent
    }

    /// `root → … → to`, following `parent` (from [`Graph::reach`]) back from `to`.
    fn path(&self, parent: &[Option<usize>], root: usize, mut to: usize) -> String {
        let mut names = vec![self.nodes[to].name.as_str()];
        while to != root {
            to = parent[to].unwrap_or(root);
            names.push(&self.nodes[to].name);
        }
        names.reverse();
        names.join(" → ")
    }
}

/// Every broken rule in `graph`, one message each.
fn violations(graph: &Graph, rules: &[Rule]) -> Vec<String> {
    let mut out = Vec::new();
    for (root, node) in graph.nodes.iter().enumerate().filter(|(_, n)| n.workspace) {
        let name = &node.name;
        let Some(rule) = rules.iter().find(|r| r.krate == name) else {
            out.push(format!(
                "{name}: no layering rule (add one here and in docs/architecture.md)"
            ));
            continue;
        };
        if let Some(may_use) = rule.may_use {
            for &d in &node.deps {
                let dep = &graph.nodes[d];
                if dep.workspace && !listed(may_use, &dep.name) {
                    out.push(format!(
                        "{name} → {}: not an allowed arrow ({name} may depend on: [{may_use}])",
                        dep.name
                    ));
                }
            }
        }
        let parent = graph.reach(root);
        for (i, dep) in graph
            .nodes
            .iter()
            .enumerate()
            .filter(|&(i, _)| parent[i].is_some())
        {
            let path = || graph.path(&parent, root, i);
            if rule.forbidden.iter().any(|list| listed(list, &dep.name)) {
                out.push(format!(
                    "{name} must not depend on {}, but reaches it: {}",
                    dep.name,
                    path()
                ));
            }
            if rule.only.is_some_and(|only| !listed(only, &dep.name)) {
                out.push(format!(
                    "{name} reaches {} {}, which is not in its allow-list: {}",
                    dep.name,
                    dep.version,
                    path()
                ));
            }
        }
    }
    out
}

/// The host target triple, from the `rustc` beside the `cargo` that built this test.
fn host_triple() -> String {
    let beside = Path::new(env!("CARGO")).with_file_name("rustc");
    let rustc = if beside.exists() {
        beside
    } else {
        "rustc".into()
    };
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    let text = String::from_utf8(out.stdout).expect("rustc -vV output");
    let host = text.lines().find_map(|l| l.strip_prefix("host: "));
    host.expect("host line in rustc -vV").to_owned()
}

/// A graph from one `cargo metadata` call, with `features` turned on (`None`: the default
/// build). It is limited to the host's platform and run `--offline` first, so it needs only
/// what the build already downloaded.
fn resolve(features: Option<&str>) -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let host = host_triple();
    let run = |offline: bool| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(root)
            .args(["metadata", "--format-version", "1", "--locked"]);
        cmd.args(["--filter-platform", &host]);
        if let Some(features) = features {
            cmd.args(["--features", features]);
        }
        if offline {
            cmd.arg("--offline");
        }
        cmd.output().expect("run cargo metadata")
    };
    let mut out = run(true);
    if !out.status.success() {
        out = run(false); // a dependency of another platform or crate was never downloaded
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo metadata failed: {stderr}");
    Graph::from_metadata(&serde_json::from_slice(&out.stdout).expect("metadata JSON"))
}

/// The real workspace's graph in its default build (no optional features).
fn workspace() -> &'static Graph {
    static GRAPH: OnceLock<Graph> = OnceLock::new();
    GRAPH.get_or_init(|| resolve(None))
}

/// The workspace crates with a `tracy` feature: the only ones that may depend on tracy-client
/// directly, and only through that feature (off by default, so the rules above hold for the
/// default build). A binary's `tracy` feature turns the libraries' on.
const TRACY_FEATURES: &str = "orrery-engine orrery-server sample-mmo";

#[test]
fn workspace_follows_the_layering() {
    let found = violations(workspace(), RULES);
    assert!(
        found.is_empty(),
        "{} layering violation(s) (see docs/architecture.md):\n  {}",
        found.len(),
        found.join("\n  ")
    );
}

#[test]
fn tracy_enters_only_through_the_tracy_features() {
    // Default build: nothing reaches Tracy (the BIN_ONLY rules above check the libraries).
    let tracy = |g: &Graph| g.nodes.iter().position(|n| n.name == "tracy-client");
    let default = workspace();
    if let Some(t) = tracy(default) {
        for (i, n) in default
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.workspace)
        {
            assert!(
                default.reach(i)[t].is_none(),
                "{} reaches tracy-client in the default build",
                n.name
            );
        }
    }
    // With sample-mmo's feature on, Tracy is in, and only the crates with a `tracy` feature
    // depend on it directly.
    let on = resolve(Some("sample-mmo/tracy"));
    let t = tracy(&on).expect("sample-mmo/tracy brings in tracy-client");
    let direct: Vec<&str> = on
        .nodes
        .iter()
        .filter(|n| n.workspace && n.deps.contains(&t))
        .map(|n| n.name.as_str())
        .collect();
    for name in TRACY_FEATURES.split_whitespace() {
        assert!(
            direct.contains(&name),
            "{name} should use tracy-client: {direct:?}"
        );
    }
    for name in &direct {
        assert!(
            listed(TRACY_FEATURES, name),
            "{name} depends on tracy-client directly; only {TRACY_FEATURES} may, behind a tracy feature"
        );
    }
}

#[test]
fn workspace_graph_is_the_real_one() {
    // Guards against a vacuous pass: the graph must hold the crates and edges we know exist.
    let g = workspace();
    let find = |name: &str| g.nodes.iter().position(|n| n.workspace && n.name == name);
    let engine = find("orrery-engine").expect("orrery-engine is a workspace member");
    find("orrery-row").expect("orrery-row is a workspace member");
    let reach = g.reach(engine);
    assert!(
        g.nodes
            .iter()
            .enumerate()
            .any(|(i, n)| n.name == "bevy_ecs" && reach[i].is_some())
    );
    let members = g.nodes.iter().filter(|n| n.workspace).count();
    assert!(members >= 9, "only {members} workspace members found");
}

#[test]
fn forbidden_dependencies_are_reported_with_their_path() {
    let ws = &[
        "orrery-row",
        "orrery-engine",
        "orrery-netcode",
        "orrery-client",
    ];
    let clean: &[(&str, &str)] = &[
        ("orrery-row", "serde"),
        ("orrery-engine", "orrery-row"),
        ("orrery-engine", "bevy_ecs"),
        ("orrery-netcode", "orrery-row"),
        ("orrery-netcode", "tokio"),
        ("orrery-client", "orrery-netcode"),
        ("orrery-client", "middle"),
    ];
    assert_eq!(
        violations(&Graph::from_edges(ws, clean), RULES),
        Vec::<String>::new()
    );

    let mut bad = clean.to_vec();
    bad.push(("orrery-engine", "tokio"));
    bad.push(("middle", "orrery-engine"));
    bad.push(("serde", "rand"));
    let found = violations(&Graph::from_edges(ws, &bad), RULES);
    let expect = [
        "orrery-engine must not depend on tokio, but reaches it: orrery-engine → tokio",
        "orrery-client must not depend on orrery-engine, but reaches it: \
         orrery-client → middle → orrery-engine",
        "orrery-client must not depend on bevy_ecs, but reaches it: \
         orrery-client → middle → orrery-engine → bevy_ecs",
        "orrery-row reaches rand 0.0.0, which is not in its allow-list: \
         orrery-row → serde → rand",
    ];
    for e in expect {
        assert!(found.iter().any(|f| f == e), "missing {e:?} in {found:#?}");
    }

    // An arrow pointing up the layering.
    let mut up = clean.to_vec();
    up.push(("orrery-netcode", "orrery-engine"));
    let found = violations(&Graph::from_edges(ws, &up), RULES);
    let arrow = "orrery-netcode → orrery-engine: not an allowed arrow \
                 (orrery-netcode may depend on: [orrery-row])";
    assert!(found.iter().any(|f| f == arrow), "{found:#?}");

    let stray = violations(&Graph::from_edges(&["orrery-stray"], &[]), RULES);
    assert_eq!(stray.len(), 1);
    assert!(
        stray[0].starts_with("orrery-stray: no layering rule"),
        "{stray:?}"
    );
}
