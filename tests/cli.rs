//! The offline CLI as users run it: exit statuses, error lines naming file,
//! object and field, JSON output, explain and matrix.

use std::path::Path;
use std::process::{Command, Output};

fn nftpol(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nftpol"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("run nftpol")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn invalid_object_is_skipped_with_exit_2_and_the_rest_compiles() {
    let out = nftpol(&["compile", "--manifests", "tests/data/bad-and-good.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(r#"tests/data/bad-and-good.yaml: NetworkPolicy default/web: spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR "10.0.0/33""#),
        "{err}"
    );
    let script = text(&out.stdout);
    assert!(
        script.contains("ingress isolated by default/deny"),
        "{script}"
    );
    assert!(!script.contains("default/web ingress"), "{script}");
}

#[test]
fn strict_fails_on_the_first_invalid_object() {
    let out = nftpol(&["compile", "--strict", "-m", "tests/data/bad-and-good.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("ipBlock.cidr"));
    assert!(out.stdout.is_empty());
}

#[test]
fn several_nodes_need_a_node_name() {
    let out = nftpol(&["compile", "-m", "examples/policies/01-web-allow.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("pass --node-name"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn json_format_is_the_ir_and_round_trips() {
    let out = nftpol(&[
        "compile",
        "-m",
        "examples/policies/09-dual-stack.yaml",
        "--node-name",
        "node-1",
        "--format",
        "json",
    ]);
    assert!(out.status.success());
    let rs: policy_compiler::Ruleset = serde_json::from_slice(&out.stdout).expect("IR JSON");
    assert!(rs.chains.contains_key("ing_ds_server"));
    let nft = nftpol(&[
        "compile",
        "-m",
        "examples/policies/09-dual-stack.yaml",
        "--node-name",
        "node-1",
    ]);
    assert_eq!(
        policy_compiler::render::render_script(&rs),
        text(&nft.stdout)
    );
}

#[test]
fn explain_names_the_deciding_rules() {
    let out = nftpol(&[
        "explain",
        "-m",
        "examples/policies/01-web-allow.yaml",
        "--from",
        "default/trusted-app-0",
        "--to",
        "default/my-app-7d9f8c6b5-x2k4p",
        "--port",
        "80/TCP",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.starts_with("ALLOWED"), "{t}");
    assert!(t.contains("allowed by default/my-app ingress[0]"), "{t}");

    let out = nftpol(&[
        "explain",
        "-m",
        "examples/policies/06-ipblock-except.yaml",
        "--from",
        "192.168.1.7",
        "--to",
        "edge/gateway-0",
        "--port",
        "443",
    ]);
    let t = text(&out.stdout);
    assert!(t.starts_with("DENIED"), "{t}");
    assert!(t.contains("isolated by edge/gateway-cidrs"), "{t}");

    let out = nftpol(&[
        "explain",
        "-m",
        "examples/policies/06-ipblock-except.yaml",
        "--from",
        "192.168.2.0/24",
        "--to",
        "edge/gateway-0",
        "--port",
        "443",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["ingress"]["rules"][0]["policy"], "edge/gateway-cidrs");
}

const STAGED: &str = "examples/policies/25-staged-policy.yaml";
const LOGGING: &str = "examples/policies/24-verdict-logging.yaml";

fn explain_out(manifests: &str, from: &str, to: &str, port: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "explain", "-m", manifests, "--from", from, "--to", to, "--port", port,
    ];
    args.extend_from_slice(extra);
    let out = nftpol(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// `explain` gives the enforced verdict, the verdict if the staged
/// policies were enforced (naming the one that would deny), and the log
/// rule the packet meets with its nflog prefix, in text and JSON.
#[test]
fn explain_shows_the_staged_verdict_and_the_log() {
    let t = explain_out(STAGED, "dev/tool-0", "shop/api-0", "80/TCP", &[]);
    assert!(t.starts_with("ALLOWED dev/tool-0"), "{t}");
    assert!(
        t.contains(
            "staged (if the staged policies were enforced): DENIED by staged shop/api-lockdown"
        ),
        "{t}"
    );
    assert!(
        t.contains("ingress of shop/api-0: denied: isolated by shop/api-lockdown"),
        "{t}"
    );
    assert!(
        t.contains(r#"logged: "shop/api-lockdown ingress would-deny" (nflog group 2) by chain ings_shop_api-0"#),
        "{t}"
    );
    // Admitted by the staged policy: allowed both ways, nothing logged.
    let t = explain_out(STAGED, "shop/cart-0", "shop/api-0", "8080/TCP", &[]);
    assert!(
        t.contains("staged (if the staged policies were enforced): ALLOWED\n"),
        "{t}"
    );
    assert!(t.contains("logged: no"), "{t}");

    let v: serde_json::Value = serde_json::from_str(&explain_out(
        STAGED,
        "dev/tool-0",
        "shop/api-0",
        "80/TCP",
        &["--format", "json"],
    ))
    .expect("json");
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(v["staged"]["allowed"], false, "{v}");
    assert_eq!(v["staged"]["would_deny"][0], "shop/api-lockdown", "{v}");
    assert_eq!(
        v["logged"][0]["prefix"], "shop/api-lockdown ingress would-deny",
        "{v}"
    );
    assert_eq!(v["logged"][0]["group"], 2, "{v}");

    // Logging without staging: no staged verdict, the allow's log.
    let t = explain_out(LOGGING, "prod/web-0", "prod/db-0", "5432/TCP", &[]);
    assert!(!t.contains("staged"), "{t}");
    assert!(
        t.contains(r#"logged: "prod/db-from-web ingress[0] allow" (nflog group 2) by chain ing_prod_db-0 rule #0 on node node-1"#),
        "{t}"
    );
    let v: serde_json::Value = serde_json::from_str(&explain_out(
        LOGGING,
        "prod/web-0",
        "prod/db-0",
        "80/TCP",
        &["--format", "json"],
    ))
    .expect("json");
    assert!(v.get("staged").is_none(), "{v}");
    assert_eq!(v["logged"][0]["prefix"], "prod/db-0 default-deny", "{v}");
    // Nothing logs and nothing is staged: no audit lines at all; with
    // the node-wide --log all the allow is logged.
    let t = explain_out(WEB, "default/trusted-app-0", MY_APP, "80/TCP", &[]);
    assert!(!t.contains("staged") && !t.contains("logged"), "{t}");
    let t = explain_out(
        WEB,
        "default/trusted-app-0",
        MY_APP,
        "80/TCP",
        &["--log", "all", "--log-group", "7"],
    );
    assert!(
        t.contains(r#"logged: "default/my-app ingress[0] allow" (nflog group 7)"#),
        "{t}"
    );
}

/// Every matrix format shows each flow's staged verdict and whether it is
/// logged.
#[test]
fn matrix_shows_staged_verdicts_and_logs() {
    let out = nftpol(&["matrix", "-m", STAGED, "--port", "80/TCP"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    let row = |from: &str| -> Vec<String> {
        t.lines()
            .find(|l| l.starts_with(&format!("{from} ")))
            .unwrap_or_else(|| panic!("row {from}: {t}"))
            .split_whitespace()
            .skip(1)
            .map(String::from)
            .collect()
    };
    // Columns: dev/tool-0, shop/api-0, shop/cart-0.
    assert_eq!(row("dev/tool-0"), vec![".", ".!*", "X+"], "{t}");
    assert!(
        t.contains(
            "dev/tool-0 -> shop/api-0: ALLOWED now, would be DENIED by staged shop/api-lockdown"
        ),
        "{t}"
    );

    let out = nftpol(&[
        "matrix", "-m", STAGED, "--port", "80/TCP", "--format", "csv",
    ]);
    let t = text(&out.stdout);
    let mut r = csv::Reader::from_reader(t.as_bytes());
    let headers = r.headers().expect("header").clone();
    let col = |name: &str| headers.iter().position(|h| h == name).expect(name);
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.expect("record")).collect();
    let flow = |from: &str, to: &str| {
        rows.iter()
            .find(|x| &x[col("from")] == from && &x[col("to")] == to)
            .unwrap_or_else(|| panic!("{from} -> {to}: {t}"))
    };
    let f = flow("dev/tool-0", "shop/api-0");
    assert_eq!(
        &f[col("staged")],
        "DENIED by staged shop/api-lockdown",
        "{t}"
    );
    assert_eq!(
        &f[col("logged")],
        "shop/api-lockdown ingress would-deny (node-1)",
        "{t}"
    );
    let f = flow("shop/api-0", "shop/cart-0");
    assert_eq!(
        (&f[col("staged")], &f[col("logged")]),
        ("ALLOWED", ""),
        "{t}"
    );

    let out = nftpol(&[
        "matrix", "-m", STAGED, "--port", "80/TCP", "--format", "markdown",
    ]);
    let t = text(&out.stdout);
    assert!(
        t.contains("| **dev/tool-0** | allow | allow (staged: **DENY**) (logged) | **DENY** (staged: allow) |"),
        "{t}"
    );

    let out = nftpol(&[
        "matrix", "-m", STAGED, "--port", "80/TCP", "--format", "svg",
    ]);
    let t = text(&out.stdout);
    let doc = roxmltree::Document::parse(&t).expect("well-formed XML");
    let outlined: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("stroke-dasharray").is_some())
        .collect();
    // tool->api, cart->api (would be denied), tool->cart (would be allowed).
    assert_eq!(outlined.len(), 3, "{t}");
    let tip = outlined
        .iter()
        .filter_map(|n| n.children().find(|c| c.has_tag_name("title"))?.text())
        .find(|s| s.contains("from: dev/tool-0") && s.contains("to: shop/api-0"))
        .unwrap_or_else(|| panic!("tooltip: {t}"));
    assert!(
        tip.contains("staged: DENIED by staged shop/api-lockdown"),
        "{tip}"
    );
    assert!(
        tip.contains("logged: shop/api-lockdown ingress would-deny"),
        "{tip}"
    );
}

#[test]
fn explain_rejects_bad_endpoints_and_ports() {
    let out = nftpol(&[
        "explain",
        "-m",
        "examples/policies/01-web-allow.yaml",
        "--from",
        "nope",
        "--to",
        "default/trusted-app-0",
        "--port",
        "80",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("neither NAMESPACE/POD"));
    let out = nftpol(&[
        "explain",
        "-m",
        "examples/policies/01-web-allow.yaml",
        "--from",
        "default/x",
        "--to",
        "default/trusted-app-0",
        "--port",
        "80/ICMP",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("TCP, UDP or SCTP"));
}

#[test]
fn matrix_prints_reachability() {
    let out = nftpol(&[
        "matrix",
        "-m",
        "examples/policies/02-default-deny-ingress.yaml",
        "--port",
        "80/TCP",
    ]);
    assert!(out.status.success());
    let t = text(&out.stdout);
    let row = t
        .lines()
        .find(|l| l.starts_with("dev/tool-0"))
        .expect("row for dev/tool-0");
    // Columns: dev/tool-0, prod/api-0, prod/db-0.
    let marks: Vec<&str> = row.split_whitespace().skip(1).collect();
    assert_eq!(marks, vec![".", "X", "X"], "{t}");
}

#[test]
fn directories_are_read_recursively() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let out = nftpol(&[
        "matrix",
        "-m",
        dir.to_str().expect("utf-8"),
        "--namespace",
        "prod",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("prod/api-0"));
}

fn matrix_output(args: &[&str]) -> String {
    let mut all = vec![
        "matrix",
        "-m",
        "examples/policies/02-default-deny-ingress.yaml",
    ];
    all.extend_from_slice(args);
    let out = nftpol(&all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn matrix_text_has_a_namespace_summary() {
    let t = matrix_output(&[]);
    let summary = t
        .split_once("by namespace")
        .map(|(_, s)| s)
        .expect("summary section");
    // dev/tool-0 reaches neither prod pod; prod reaches itself 2 of 4.
    let row = |ns: &str| -> Vec<String> {
        summary
            .lines()
            .find(|l| l.starts_with(&format!("{ns} ")))
            .unwrap_or_else(|| panic!("row {ns}: {t}"))
            .split_whitespace()
            .skip(1)
            .map(String::from)
            .collect()
    };
    assert_eq!(row("dev"), vec!["1/1", "0/2"], "{t}");
    assert_eq!(row("prod"), vec!["2/2", "2/4"], "{t}");
    let only = matrix_output(&["--summary"]);
    assert!(!only.contains("dev/tool-0"), "{only}");
    assert!(only.contains("0/2"), "{only}");
}

#[test]
fn matrix_csv_has_one_row_per_flow_with_the_deciding_rules() {
    let t = matrix_output(&["--format", "csv", "--port", "80/TCP", "--port", "53/UDP"]);
    let mut r = csv::Reader::from_reader(t.as_bytes());
    let headers = r.headers().expect("header").clone();
    let col = |name: &str| headers.iter().position(|h| h == name).expect(name);
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.expect("record")).collect();
    assert_eq!(rows.len(), 2 * 3 * 3, "{t}");
    let row = rows
        .iter()
        .find(|x| &x[col("from")] == "dev/tool-0" && &x[col("to")] == "prod/db-0")
        .expect("dev/tool-0 -> prod/db-0");
    assert_eq!(&row[col("verdict")], "DENIED");
    assert_eq!(&row[col("port")], "80/TCP");
    assert!(
        row[col("ingress")].contains("isolated by prod/default-deny-ingress"),
        "{t}"
    );

    let s = matrix_output(&["--format", "csv", "--summary"]);
    let mut r = csv::Reader::from_reader(s.as_bytes());
    let rows: Vec<Vec<String>> = r
        .records()
        .map(|x| x.expect("record").iter().map(String::from).collect())
        .collect();
    assert!(
        rows.contains(
            &["80/TCP", "IPv4", "prod", "prod", "2", "2", "4"]
                .map(String::from)
                .to_vec()
        ),
        "{s}"
    );
}

#[test]
fn matrix_markdown_is_a_table_per_probe_and_summary() {
    let t = matrix_output(&["--format", "markdown"]);
    assert!(t.contains("## 80/TCP IPv4"), "{t}");
    assert!(
        t.contains("| **dev/tool-0** | allow | **DENY** | **DENY** |"),
        "{t}"
    );
    assert!(t.contains("| **prod** | 2/2 | 2/4 |"), "{t}");
}

/// The SVG of a matrix: valid XML in the SVG namespace, one cell per flow
/// coloured by verdict, with the decision as the cell's tooltip.
#[test]
fn matrix_svg_is_a_valid_heat_map() {
    let t = matrix_output(&["--format", "svg"]);
    let doc = roxmltree::Document::parse(&t).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let cells = |class: &str| -> Vec<roxmltree::Node<'_, '_>> {
        doc.descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("class") == Some(class))
            .collect()
    };
    // 3 pods: 5 allowed, 4 denied (as in the text grid).
    assert_eq!(cells("allowed").len(), 5, "{t}");
    assert_eq!(cells("denied").len(), 4, "{t}");
    assert_eq!(cells("namespace").len(), 4, "{t}");
    let tip = cells("denied")
        .iter()
        .filter_map(|n| n.children().find(|c| c.has_tag_name("title")))
        .filter_map(|n| n.text())
        .find(|s| s.contains("from: dev/tool-0") && s.contains("to: prod/db-0"))
        .expect("tooltip of dev/tool-0 -> prod/db-0")
        .to_string();
    assert!(
        tip.contains("isolated by prod/default-deny-ingress"),
        "{tip}"
    );
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Opens the SVG in headless Chromium and checks the screenshot shows the
/// heat map: both verdict colours, in about the share the matrix has.
#[test]
fn matrix_svg_renders_in_a_browser() {
    let Some(browser) = chromium() else {
        nftpol_test_support::skip(
            "matrix_svg_renders_in_a_browser",
            "needs chromium (.ci/run installs it)",
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("nftpol-svg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let svg = dir.join("matrix.svg");
    let png_path = dir.join("shot.png");
    std::fs::write(&svg, matrix_output(&["--format", "svg"])).expect("write svg");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=600,500",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", png_path.display()))
        .arg(format!("file://{}", svg.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait chromium") {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish the screenshot in 90 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "chromium exited with {status}");
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).expect("screenshot written"),
    ));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    let channels = info.color_type.samples();
    let count = |rgb: (u8, u8, u8)| {
        buf[..info.buffer_size()]
            .chunks(channels)
            .filter(|p| {
                p[0].abs_diff(rgb.0) <= 8 && p[1].abs_diff(rgb.1) <= 8 && p[2].abs_diff(rgb.2) <= 8
            })
            .count()
    };
    // nftpol::report::svg::ALLOWED_COLOR / DENIED_COLOR.
    let green = count((0x2e, 0x9d, 0x4f));
    let red = count((0xd7, 0x30, 0x3a));
    // 5 allowed and 4 denied 20x20 cells (red also fills the summary's
    // all-denied dev -> prod cell).
    assert!(green >= 5 * 300, "green pixels {green}");
    assert!(red >= 4 * 300, "red pixels {red}");
}

#[test]
fn crds_prints_the_three_admin_policy_crds() {
    let out = nftpol(&["crds"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert_eq!(yaml, nftpol_crds::all_yaml());
    for kind in [
        "kind: AdminNetworkPolicy",
        "kind: BaselineAdminNetworkPolicy",
        "kind: ClusterNetworkPolicy",
        "kind: NodeNetworkPolicyStatus",
    ] {
        assert!(yaml.contains(kind), "{kind} missing");
    }
}

use nftpol_test_support::Netns;

/// `prog args...` inside the namespace, from the crate root.
fn run_in(ns: &Netns, prog: &str, args: &[&str]) -> Output {
    ns.cmd(prog)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("run ip netns exec")
}

fn nftpol_in(ns: &Netns, args: &[&str]) -> Output {
    run_in(ns, env!("CARGO_BIN_EXE_nftpol"), args)
}

fn nft_in(ns: &Netns, args: &[&str]) -> String {
    let out = ns.nft(args);
    assert!(out.status.success(), "nft {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

const WEB: &str = "examples/policies/01-web-allow.yaml";
const MY_APP: &str = "default/my-app-7d9f8c6b5-x2k4p";
const MY_APP_CHAIN: &str = "ing_default_my-app-7d9f8c6b5-x2k4p";

fn explain_live(ns: &Netns, from: &str, to: &str) -> Output {
    nftpol_in(
        ns,
        &[
            "explain",
            "--live",
            "-m",
            WEB,
            "--node-name",
            "node-1",
            "--from",
            from,
            "--to",
            to,
            "--port",
            "80/TCP",
        ],
    )
}

/// `explain --live` in a namespace whose table `apply` wrote agrees with
/// the compiler for every pair of pods; a rule inserted or deleted by hand
/// with `nft` is a loud mismatch (exit status 3) naming the rules.
#[test]
fn explain_live_agrees_with_the_compiler_and_reports_tampering() {
    nftpol_test_support::require_root!();
    let ns = Netns::create("cli-live");
    let applied = nftpol_in(&ns, &["apply", "-m", WEB, "--node-name", "node-1"]);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    let pods = [
        "default/external-service-0",
        MY_APP,
        "default/trusted-app-0",
        "default/untrusted-0",
    ];
    let mut decided_by_policy = 0;
    for from in pods {
        for to in pods {
            let out = explain_live(&ns, from, to);
            let t = text(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{from} -> {to}: {t}{}",
                text(&out.stderr)
            );
            assert!(t.contains("the kernel agrees with the compiler"), "{t}");
            decided_by_policy += usize::from(t.contains(r#"comment "default/my-app ingress[0]""#));
        }
    }
    // trusted-app-0 -> my-app is accepted by the policy's rule, named.
    assert_eq!(decided_by_policy, 1);
    let out = nftpol_in(
        &ns,
        &[
            "explain",
            "--live",
            "-m",
            WEB,
            "--node-name",
            "node-1",
            "--from",
            "default/untrusted-0",
            "--to",
            MY_APP,
            "--port",
            "80",
            "--format",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["agrees"], true, "{v}");
    assert_eq!(v["kernel"]["accepted"], false, "{v}");
    assert_eq!(
        v["kernel"]["deciding"]["comment"], "ingress isolated by default/my-app",
        "{v}"
    );
    // The deciding drop counts; no packet has crossed this namespace.
    assert_eq!(v["kernel"]["hits"]["packets"], 0, "{v}");

    // Per policy: the one policy, both directions it enforces, nothing
    // counted yet, so both are clean-up candidates.
    let out = nftpol_in(&ns, &["hits", "--zero"]);
    let t = text(&out.stdout);
    assert!(out.status.success(), "{t}{}", text(&out.stderr));
    assert!(
        t.lines()
            .any(|l| l.starts_with("default/my-app ") && l.contains("ingress")),
        "{t}"
    );
    assert!(
        t.contains("2 of 2 policy directions counted no packet"),
        "{t}"
    );

    // Tamper: an accept at the top of the pod's ingress chain.
    nft_in(
        &ns,
        &["insert", "rule", "inet", "nftpol", MY_APP_CHAIN, "accept"],
    );
    let out = explain_live(&ns, "default/untrusted-0", MY_APP);
    let t = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        t.starts_with("MISMATCH on node node-1: the kernel ACCEPTS default/untrusted-0"),
        "{t}"
    );
    assert!(
        t.contains(r#"drop comment "ingress isolated by default/my-app""#),
        "{t}"
    );

    // Restore, then delete the policy's accept rule by hand.
    let applied = nftpol_in(&ns, &["apply", "-m", WEB, "--node-name", "node-1"]);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    assert_eq!(
        explain_live(&ns, "default/untrusted-0", MY_APP)
            .status
            .code(),
        Some(0)
    );
    let listing = nft_in(
        &ns,
        &["-a", "list", "chain", "inet", "nftpol", MY_APP_CHAIN],
    );
    let handle = listing
        .lines()
        .find(|l| l.contains("ip saddr @pod4_37677fdecdbb5ff8"))
        .and_then(|l| l.rsplit_once("# handle "))
        .map(|(_, h)| h.trim().to_string())
        .unwrap_or_else(|| panic!("handle of the policy rule in {listing}"));
    nft_in(
        &ns,
        &[
            "delete",
            "rule",
            "inet",
            "nftpol",
            MY_APP_CHAIN,
            "handle",
            &handle,
        ],
    );
    let out = explain_live(&ns, "default/trusted-app-0", MY_APP);
    let t = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(t.contains("the kernel DROPS"), "{t}");
    assert!(
        t.contains(r#"accept comment "default/my-app ingress[0]""#),
        "{t}"
    );
}

/// `explain --live` on a table with a staged policy and logging: the
/// kernel's log rules on the flow's path are shown with their prefixes,
/// the staged verdict beside the enforced one, and a log rule deleted by
/// hand is a mismatch (exit status 3) though the verdict is unchanged.
#[test]
fn explain_live_shows_the_kernel_logs_and_a_missing_log_is_a_mismatch() {
    nftpol_test_support::require_root!();
    let ns = Netns::create("cli-livelog");
    let applied = nftpol_in(&ns, &["apply", "-m", STAGED, "--node-name", "node-1"]);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    let live = |format: &str| {
        nftpol_in(
            &ns,
            &[
                "explain",
                "--live",
                "-m",
                STAGED,
                "--node-name",
                "node-1",
                "--from",
                "dev/tool-0",
                "--to",
                "shop/api-0",
                "--port",
                "80/TCP",
                "--format",
                format,
            ],
        )
    };
    let out = live("nft");
    let t = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{t}{}", text(&out.stderr));
    assert!(t.starts_with("LIVE ALLOWED on node node-1"), "{t}");
    assert!(
        t.contains(r#"logged: "shop/api-lockdown ingress would-deny" (nflog group 2) by chain ings_shop_api-0 rule #1"#),
        "{t}"
    );
    assert!(
        t.contains("staged policies (cluster-wide, if they were enforced): DENIED by staged shop/api-lockdown"),
        "{t}"
    );
    let v: serde_json::Value = serde_json::from_slice(&live("json").stdout).expect("JSON");
    assert_eq!(v["agrees"], true, "{v}");
    assert_eq!(
        v["kernel"]["logged"][0]["prefix"], "shop/api-lockdown ingress would-deny",
        "{v}"
    );
    assert_eq!(v["staged"]["would_deny"][0], "shop/api-lockdown", "{v}");

    let chain = "ings_shop_api-0";
    let listing = nft_in(&ns, &["-a", "list", "chain", "inet", "nftpol", chain]);
    let handle = listing
        .lines()
        .find(|l| l.contains("would-deny"))
        .and_then(|l| l.rsplit_once("# handle "))
        .map(|(_, h)| h.trim().to_string())
        .unwrap_or_else(|| panic!("handle of the would-deny log in {listing}"));
    nft_in(
        &ns,
        &["delete", "rule", "inet", "nftpol", chain, "handle", &handle],
    );
    let out = live("nft");
    let t = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        t.contains("as the compiler intends, but does not log it as the compiler intends"),
        "{t}"
    );
    let v: serde_json::Value = serde_json::from_slice(&live("json").stdout).expect("JSON");
    assert_eq!(v["agrees"], false, "{v}");
    assert_eq!(v["kernel"]["logged"], serde_json::json!([]), "{v}");
    assert_eq!(
        v["compiler"]["logged"][0]["prefix"], "shop/api-lockdown ingress would-deny",
        "{v}"
    );
}

/// `diff` against the kernel's table: before any apply everything would be
/// created; after applying one manifest set it shows the chain, rule and
/// element changes to another and the flows through the node that change
/// verdict, and it changes nothing itself.
#[test]
fn diff_against_the_kernel_shows_what_apply_would_change() {
    nftpol_test_support::require_root!();
    let ns = Netns::create("cli-diff");
    let new = "tests/data/diff/web-port-8080.yaml";
    let diff = |m: &str| {
        let out = nftpol_in(
            &ns,
            &["diff", "-m", m, "--node-name", "node-1", "--port", "80/TCP"],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let t = diff(WEB);
    assert!(
        t.contains("no table inet nftpol: all of it would be created"),
        "{t}"
    );
    assert!(
        t.contains("+ chain ing_default_my-app-7d9f8c6b5-x2k4p (2 rules)"),
        "{t}"
    );
    // Nothing enforced yet: untrusted-0 -> my-app becomes denied.
    assert!(
        t.contains(
            "80/TCP default/untrusted-0 -> default/my-app-7d9f8c6b5-x2k4p: ALLOWED -> DENIED"
        ),
        "{t}"
    );

    let applied = nftpol_in(&ns, &["apply", "-m", WEB, "--node-name", "node-1"]);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    let t = diff(new);
    assert!(
        t.starts_with("--- kernel table inet nftpol on this host\n"),
        "{t}"
    );
    assert!(t.contains(&format!("~ chain {MY_APP_CHAIN}")), "{t}");
    assert!(
        t.contains(
            "    - ip saddr @pod4_37677fdecdbb5ff8 meta l4proto tcp th dport 80 counter accept"
        ),
        "{t}"
    );
    assert!(
        t.contains(
            "    + ip saddr @pod4_37677fdecdbb5ff8 meta l4proto tcp th dport 8080 counter accept"
        ),
        "{t}"
    );
    assert!(
        t.contains(
            "~ set pod4_37677fdecdbb5ff8 (type ipv4_addr): +1 -0 elements\n    + 10.244.1.12\n"
        ),
        "{t}"
    );
    // The new pod's address also gets its chain for related packets.
    assert!(
        t.contains("+ chain rel_10.244.1.12 (3 rules)\n")
            && t.contains("+ 10.244.1.12 : jump rel_10.244.1.12\n"),
        "{t}"
    );
    assert!(
        t.contains("apply would send: +1 chain, ~1 chain, +2 elements"),
        "{t}"
    );
    let flows = t.split_once("changing verdict").expect("flow section").1;
    assert!(
        flows.contains(
            "80/TCP default/trusted-app-0 -> default/my-app-7d9f8c6b5-x2k4p: ALLOWED -> DENIED"
        ),
        "{t}"
    );
    assert_eq!(
        flows.lines().filter(|l| l.starts_with("  80/TCP ")).count(),
        1,
        "{t}"
    );

    // diff changed nothing: the applied set still matches the kernel.
    assert!(diff(WEB).contains("no changes to table inet nftpol"));
    let applied = nftpol_in(&ns, &["apply", "-m", new, "--node-name", "node-1"]);
    assert!(applied.status.success(), "{}", text(&applied.stderr));
    let t = diff(new);
    assert!(
        t.contains("no changes to table inet nftpol") && t.contains("  none"),
        "{t}"
    );

    // The L2 guard shows too: applied with an interface for my-app, then
    // a chain of it flushed behind nftpol's back.
    let dir = tempfile::tempdir().expect("temp dir");
    let ifmap = dir.path().join("interfaces.yaml");
    std::fs::write(&ifmap, "default/my-app-7d9f8c6b5-x2k4p: vpx0\n").expect("write");
    let ifmap = ifmap.to_str().expect("utf-8 path");
    let with_if = |cmd: &str| {
        let out = nftpol_in(
            &ns,
            &[
                cmd,
                "-m",
                new,
                "--node-name",
                "node-1",
                "--pod-interfaces",
                ifmap,
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    with_if("apply");
    let out = ns.nft(&[
        "flush",
        "chain",
        "netdev",
        "nftpol",
        "l2_default_my-app-7d9f8c6b5-x2k4p",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = with_if("diff");
    assert!(
        t.contains("~ table netdev nftpol (L2 guard): active -> active\n~ chain l2_default_my-app-7d9f8c6b5-x2k4p\n"),
        "{t}"
    );
    assert!(t.contains("    + ether type 8021q counter drop"), "{t}");
}

#[test]
fn unread_policy_versions_and_quoted_ports_are_skipped_with_exit_2() {
    let out = nftpol(&[
        "compile",
        "--manifests",
        "tests/data/unread-version-and-string-port.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(r#"NetworkPolicy default/old: apiVersion: "extensions/v1beta1" is not read"#),
        "{err}"
    );
    assert!(
        err.contains(r#"NetworkPolicy default/quoted: spec.ingress[0].ports[0].port: "80" is not a valid port name"#),
        "{err}"
    );
}

#[test]
fn explain_names_the_admin_tier_rule_that_decided() {
    let ex = "examples/policies/16-admin-sensitive-namespace.yaml";
    let out = nftpol(&[
        "explain",
        "-m",
        ex,
        "--from",
        "apps/web-0",
        "--to",
        "sensitive/vault-0",
        "--port",
        "80/TCP",
    ]);
    let t = text(&out.stdout);
    assert!(t.starts_with("DENIED"), "{t}");
    assert!(
        t.contains("denied by admin tier: ClusterNetworkPolicy/sensitive-ns ingress[1] (deny-everyone-else) Deny"),
        "{t}"
    );
    let out = nftpol(&[
        "explain",
        "-m",
        ex,
        "--from",
        "monitoring/prometheus-0",
        "--to",
        "sensitive/vault-0",
        "--port",
        "80/TCP",
        "--family",
        "ipv6",
    ]);
    let t = text(&out.stdout);
    assert!(t.starts_with("ALLOWED"), "{t}");
    assert!(t.contains("ingress[0] (allow-monitoring) Accept"), "{t}");
    let out = nftpol(&[
        "explain",
        "-m",
        "examples/policies/20-baseline-default-deny.yaml",
        "--from",
        "10.1.2.3",
        "--to",
        "shop/cache-0",
        "--port",
        "80/TCP",
    ]);
    // Namespace peers match pods only: an outside address is no peer of
    // the baseline's deny, so the default allow applies.
    let t = text(&out.stdout);
    assert!(t.starts_with("ALLOWED"), "{t}");
    assert!(
        t.contains("ingress of shop/cache-0: no policy isolates it"),
        "{t}"
    );
}

/// `--log`, `--log-group` and `--log-rate` reach the compiled ruleset:
/// every isolated pod's default drop gets a rate-limited log rule before
/// it, in the group asked for; without them nothing logs.
#[test]
fn log_flags_add_rate_limited_log_rules() {
    let m = "examples/policies/02-default-deny-ingress.yaml";
    let plain = nftpol(&["compile", "-m", m]);
    assert_eq!(plain.status.code(), Some(0), "{}", text(&plain.stderr));
    assert!(
        !text(&plain.stdout).contains(" log "),
        "{}",
        text(&plain.stdout)
    );
    let none = nftpol(&["compile", "-m", m, "--log", "none"]);
    assert_eq!(none.stdout, plain.stdout);

    let out = nftpol(&[
        "compile",
        "-m",
        m,
        "--log",
        "deny",
        "--log-group",
        "9",
        "--log-rate",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    for pod in ["prod/api-0", "prod/db-0"] {
        let line = format!(
            "limit rate 3/second burst 5 packets log prefix \"{pod} default-deny\" group 9"
        );
        assert!(script.contains(&line), "{line} missing:\n{script}");
    }
    assert!(!script.contains("dev/tool-0"), "{script}");
    assert!(!script.contains(" allow\""), "deny logs no allow: {script}");

    let all = text(&nftpol(&["compile", "-m", m, "--log", "all"]).stdout);
    assert!(all.contains("group 2"), "default group: {all}");
    assert!(all.contains("limit rate 10/second"), "default rate: {all}");

    for bad in [
        &["--log", "loud"][..],
        &["--log-rate", "0"],
        &["--log-group", "70000"],
    ] {
        let mut args = vec!["compile", "-m", m];
        args.extend_from_slice(bad);
        let out = nftpol(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: clap usage error");
        assert!(text(&out.stderr).contains(bad[0]), "{}", text(&out.stderr));
    }
    for cmd in ["compile", "apply", "agent", "diff"] {
        let help = text(&nftpol(&[cmd, "--help"]).stdout);
        for flag in [
            "--log <MODE>",
            "--log-group <N>",
            "--log-rate <R>",
            "default-deny",
        ] {
            assert!(help.contains(flag), "{cmd} --help lacks {flag}:\n{help}");
        }
    }
}

/// `nftpol compile` of `manifest` for node-1 with the interface map
/// `interfaces`, plus `extra` arguments.
fn compile_on_node_1(
    manifest: &std::path::Path,
    interfaces: &std::path::Path,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "compile",
        "-m",
        manifest.to_str().expect("utf-8 path"),
        "--node-name",
        "node-1",
        "--pod-interfaces",
        interfaces.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    nftpol(&args)
}

/// Local pods whose host interface is unknown are reported in one warning
/// line (how many, the first few by name), not one line per pod.
#[test]
fn pods_without_a_known_interface_are_warned_about_in_one_line() {
    let dir = std::env::temp_dir().join(format!("nftpol-cli-unmapped-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut yaml = String::new();
    for i in 0..7 {
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x}}\n\
             spec: {{nodeName: node-1}}\nstatus: {{podIP: 10.0.0.{}}}\n---\n",
            i + 1
        ));
    }
    let manifest = dir.join("pods.yaml");
    std::fs::write(&manifest, yaml).expect("write manifest");
    let interfaces = dir.join("interfaces.yaml");
    std::fs::write(&interfaces, "x/p0: veth0\n").expect("write interface map");
    let out = compile_on_node_1(&manifest, &interfaces, &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Without the terminal colours tracing puts around field names.
    let mut err = String::new();
    let mut escape = false;
    for c in text(&out.stderr).chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, c) => err.push(c),
        }
    }
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("no host interface known"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("count=6"), "{err}");
    assert!(lines[0].contains("x/p1, x/p2"), "{err}");
    assert!(lines[0].contains("and 1 more"), "{err}");
    assert!(!lines[0].contains("x/p0"), "{err}");
}

/// `--allow-pod-tunnels` drops only the tunnel rules from a pod's source
/// validation chain; the address check stays.
#[test]
fn allow_pod_tunnels_keeps_validation_but_not_the_tunnel_drops() {
    let dir = std::env::temp_dir().join(format!("nftpol-cli-tunnels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let manifest = dir.join("pods.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p0, namespace: x}\n\
         spec: {nodeName: node-1}\nstatus: {podIP: 10.0.0.1}\n",
    )
    .expect("write manifest");
    let interfaces = dir.join("interfaces.yaml");
    std::fs::write(&interfaces, "x/p0: veth0\n").expect("write interface map");
    let compile = |extra: &[&str]| {
        let out = compile_on_node_1(&manifest, &interfaces, extra);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let default = compile(&[]);
    let allowed = compile(&["--allow-pod-tunnels"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(default.contains("tunnel packet (GRE)"), "{default}");
    assert!(
        default.contains("tunnel packet (VXLAN, UDP 8472)"),
        "{default}"
    );
    assert!(!allowed.contains("tunnel packet"), "{allowed}");
    for out in [&default, &allowed] {
        assert!(
            out.contains("forged source: not an address of x/p0"),
            "{out}"
        );
    }
}
